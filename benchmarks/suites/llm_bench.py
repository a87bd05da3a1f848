"""LLM folding against the structured baselines on equal terms (issue 20): WikiText-2
perplexity at 10/20/30/40% of decoder-block parameters removed, no fine-tuning.

Every baseline appears as published and with folding's least-squares repair on the same
tokens, so "which channels" and "how repaired" separate; every row names its calibration
source, and data-free rows are marked. "Fold's schedule" is the one the default fold kept
at that budget (inner-mlp unless its own-text check chose paper-mlp: tuneless.llm.choose;
the `fold` row runs first). Calibration tokens are drawn
once per run: the model's own samples ("self", 16 × 128 tokens, fold_llm's default) and
windows of the Python reference docs ("docs", real text that is not WikiText). The `fold`
row is the documented one-liner `tuneless.fold(model, sparsity=s)` and includes its own
sampling in its seconds; the other rows get the shared tokens and their seconds exclude
sampling.
Rows are appended to a partial CSV as they finish, so an interrupted run resumes.
Writes docs/results/llm_<model>.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from tuneless.io_atomic import atomic_write_text

FIELDS = ["method", "target", "removed", "block_params", "ppl", "seconds", "cpu_seconds",
          "note"]
# name -> (what it is, calibration source; "" = data-free)
METHODS = {
    "fold": ("the default: inner-mlp schedule guarded by paper-mlp, by flat-mlp beyond its "
             "reach (tuneless.llm.choose), two steps, self repair, activation features", ""),
    "fold-naive": ("the paper: paper-mlp, no repair, weight features", ""),
    "fold-docs": ("fold with the refit on real text (data-driven upper reference)", "docs"),
    "magnitude": ("structured magnitude on fold's schedule, no repair (the paper's baseline)",
                  ""),
    "magnitude+self": ("magnitude + the self repair", ""),
    "wanda-sp": ("Wanda-sp as published: uniform, no repair", "docs"),
    "wanda-sp+self": ("Wanda-sp scores on fold's schedule + the self repair", "docs"),
    "flap": ("FLAP as published: adaptive structure, bias compensation", "docs"),
    "flap+self": ("FLAP metric + bias on fold's schedule + the self repair", "docs"),
    "obs": ("structured OBS selection (ZipLM/SlimGPT-style) on fold's schedule + the self "
            "repair, its statistics on the same self-generated text", ""),
    "svd-llm": ("SVD-LLM-style whitened truncation", "docs"),
    "svd-llm-self": ("whitened truncation on self-generated text", ""),
}
DEFAULT_METHODS = ",".join(METHODS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (default), a .gguf file, a Hugging Face folder or Hub id")
    p.add_argument("--tokens", type=int, default=2048, help="token budget of WikiText-2 test")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--sparsities", default="0.1,0.2,0.3,0.4")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--full-split", action="store_true",
                   help="also dense and the default fold at 20%% on the whole test split")
    p.add_argument("--also-tokens", default="",
                   help="comma-separated token budgets (e.g. 16384): also dense and the "
                        "default fold at 20%% on the first N test tokens")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None, help="text file (default: WikiText-2 raw test)")
    p.add_argument("--out", type=Path, default=Path("docs/results"))


_KEPT: dict[float, str] = {}  # sparsity -> the schedule this run's default fold kept


def remember_kept(rows: list[dict]) -> None:
    """The schedules the `fold` rows of an interrupted run kept (their note)."""
    for r in rows:
        if r["method"] == "fold" and r.get("note", "").startswith("schedule "):
            _KEPT[float(r["target"])] = r["note"].split()[1]


def schedule_for(model, sparsity: float) -> str:
    """The schedule the default fold used at this budget, so the baselines that take
    folding's schedule take the same one: the one its measured choice kept
    (tuneless.llm.choose) when the `fold` row ran first in this run, else its first
    candidate (inner-mlp; paper-mlp or uniform where inner-mlp cannot reach)."""
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.choose import default_candidates

    if sparsity in _KEPT:
        return _KEPT[sparsity]
    return default_candidates(adapter_for(model).shapes(model), sparsity, "kv-groups").primary


def build(method: str, model, tok, sparsity: float, calib: dict):
    """The compressed model of one row (tuneless public API, one call)."""
    import tuneless
    from tuneless.llm import flap_llm, svd_llm

    self_ids, docs = calib["self"], calib["docs"]
    schedule = schedule_for(model, sparsity)
    if method == "fold":
        small = tuneless.fold(model, sparsity=sparsity)
        choice = small.tuneless_report.get("schedule_choice")
        _KEPT[sparsity] = choice["kept"] if choice else schedule
        return small
    if method == "fold-naive":
        return tuneless.fold(model, sparsity=sparsity, repair="none")
    if method == "fold-docs":
        return tuneless.fold(model, sparsity=sparsity, repair="refit", data=docs)
    if method.startswith("magnitude"):
        small = tuneless.prune(model, sparsity=sparsity, criterion="magnitude",
                               schedule=schedule)
        return _repaired(model, small, self_ids) if method.endswith("+self") else small
    if method == "wanda-sp":
        return tuneless.prune(model, sparsity=sparsity, criterion="wanda-sp", data=[docs])
    if method == "wanda-sp+self":
        small = tuneless.prune(model, sparsity=sparsity, criterion="wanda-sp", data=[docs],
                               schedule=schedule)
        return _repaired(model, small, self_ids)
    if method == "flap":
        return flap_llm(model, sparsity, batches=[docs])
    if method == "flap+self":
        small = flap_llm(model, sparsity, batches=[docs], structure="uniform",
                         schedule=schedule)
        return _repaired(model, small, self_ids)
    if method == "obs":  # on the fold's schedule: only the choice of channels differs
        return tuneless.prune(model, sparsity=sparsity, criterion="obs", schedule=schedule)
    if method == "svd-llm":
        return svd_llm(model, sparsity, whiten="data", data=docs)
    if method == "svd-llm-self":
        return svd_llm(model, sparsity, whiten="data", data=self_ids)
    raise ValueError(method)


def _repaired(model, small, ids):
    from tuneless.llm.fold import repair_reduced

    return repair_reduced(model, small, "refit", data=ids)


def calibration(model, tok, n: int = 16, length: int = 128) -> dict:
    """The shared calibration tokens: the model's own samples and Python-docs windows."""
    import torch

    from tuneless.llm.calibration import calibration_batches
    from tuneless.llm.refit import self_generated

    docs = (torch.cat(calibration_batches(tok, n, length, 0)) if tok is not None else None)
    return {"self": self_generated(model, tok, n, length, 0), "docs": docs}


def _budgets(text: str) -> list[int]:
    """--also-tokens "16384,32768" -> [16384, 32768]; a one-line error for anything else."""
    from tuneless.errors import TunelessError

    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        out = [0]
    if any(n < 1 for n in out):
        raise TunelessError(f"--also-tokens {text!r}: positive token counts, comma-separated")
    return out


def _read_partial(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _csv_text(rows: list[dict]) -> str:
    lines = [",".join(FIELDS)]
    lines += [",".join(str(r.get(f, "")).replace(",", ";") for f in FIELDS) for r in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.errors import TunelessError
    from tuneless.llm import block_params
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize
    from tuneless.llm.source import load_llm
    from tuneless.provenance import stamp, stamp_markdown

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise TunelessError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    info = stamp()
    model, tok = load_llm(args.model, need_tokenizer=True)
    name = Path(args.model).name.split(".")[0].replace("/", "_")
    ids = tokenize(tok, read_text(args.data or WIKITEXT2_TEST))
    dense_blocks = block_params(model)
    partial = args.out / f"llm_{name}.partial.csv"
    rows = _read_partial(partial)
    remember_kept(rows)  # a resumed run: the baselines still take the fold's schedule
    done = {(r["method"], r["target"]) for r in rows}
    calib = calibration(model, tok)

    def ppl(m, tokens=args.tokens):
        return perplexity_of_ids(m, ids, args.seq_len, tokens, progress=False)

    def add(row):
        rows.append(row)
        atomic_write_text(_csv_text(rows), partial)
        _write_outputs(rows, args, name, stamp_markdown(info), ids.numel())
        print(f"{row['method']:>14} {row['target']:>5} removed {row['removed']} "
              f"ppl {row['ppl']} ({row['seconds']} s) {row.get('note', '')}", flush=True)

    if ("dense", "0.0") not in done:
        add({"method": "dense", "target": "0.0", "removed": "0.000",
             "block_params": dense_blocks, "ppl": f"{ppl(model):.3f}", "seconds": "0.0",
             "cpu_seconds": "0.0", "note": ""})
    for s in sparsities:
        for m in methods:
            if (m, str(s)) in done:
                continue
            start, cpu = time.perf_counter(), time.process_time()
            try:
                small = build(m, model, tok, s, calib)
            except TunelessError as exc:  # e.g. a schedule that cannot reach the budget
                add({"method": m, "target": str(s), "removed": "", "block_params": "",
                     "ppl": "", "seconds": "", "cpu_seconds": "", "note": str(exc)[:100]})
                continue
            secs, cpu = time.perf_counter() - start, time.process_time() - cpu
            blocks = block_params(small)
            add({"method": m, "target": str(s), "removed": f"{1 - blocks / dense_blocks:.3f}",
                 "block_params": blocks, "ppl": f"{ppl(small):.3f}", "seconds": f"{secs:.1f}",
                 "cpu_seconds": f"{cpu:.1f}",
                 "note": f"schedule {_KEPT[s]}" if m == "fold" else ""})
            del small
    extra = [(f"first {n} tokens", n) for n in _budgets(args.also_tokens)]
    extra += [("full split", None)] if args.full_split else []
    folded = None  # the default fold at 20%, built once for every extra budget
    for m, s in (("dense", 0.0), ("fold", 0.2)):
        for label, n in extra:
            key = (f"{m} ({label})", str(s))
            if key in done:
                continue
            if m == "fold" and folded is None:
                folded = build(m, model, tok, s, calib)
            small = model if m == "dense" else folded
            used = ids.numel() if n is None else min(n, ids.numel())
            add({"method": key[0], "target": str(s),
                 "removed": f"{1 - block_params(small) / dense_blocks:.3f}",
                 "block_params": block_params(small), "ppl": f"{ppl(small, n):.3f}",
                 "seconds": "", "cpu_seconds": "",
                 "note": f"all {used} tokens" if n is None else f"first {used} tokens"})
    _write_outputs(rows, args, name, stamp_markdown(info), ids.numel())  # also when resumed
    partial.unlink(missing_ok=True)
    return 0


def _write_outputs(rows, args, name: str, provenance: str, n_tokens: int) -> None:
    out = args.out
    used = min(args.tokens, n_tokens) // args.seq_len * args.seq_len
    atomic_write_text(f"# {provenance}" + _csv_text(rows), out / f"llm_{name}.csv")
    dense = next(float(r["ppl"]) for r in rows if r["method"] == "dense")
    md = [f"# {args.model}: folding vs structured baselines, no fine-tuning", "", provenance,
          f"WikiText-2 raw test, first {used} tokens in windows of {args.seq_len}; perplexity "
          "(lower is better); \"removed\" = measured fraction of decoder-block parameters. "
          "Calibration: \"self\" = 16×128 tokens the dense model sampled itself (data-free), "
          "\"docs\" = 16×128 tokens of the Python reference docs (real text, not WikiText). "
          f"Seconds: wall and CPU of this process to compress ({args.threads} thread).", "",
          "| method | what | calibration | target | removed | perplexity | × dense | wall s | "
          "CPU s | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    # an extra budget's rows ("fold (first 16384 tokens)") are compared with dense on it
    dense_on = {r["method"][len("dense "):]: float(r["ppl"]) for r in rows
                if r["method"].startswith("dense (") and r["ppl"]}
    for r in rows:
        what, source = METHODS.get(r["method"].split(" ")[0], ("", ""))
        ref = dense_on.get(r["method"].partition(" ")[2], dense)
        uses = {"": "none (data-free)", "docs": "Python docs"}[source]
        if r["method"].endswith("+self") or r["method"] in ("fold", "svd-llm-self"):
            uses += " + self" if source else ""
        ppl = f"{float(r['ppl']):.2f} | {float(r['ppl']) / ref:.2f}" if r["ppl"] else " | "
        removed = f"{float(r['removed']):.1%}" if r["removed"] else ""
        md.append(f"| {r['method']} | {what} | {uses if r['method'] != 'dense' else '-'} | "
                  f"{float(r['target']):.0%} | {removed} | {ppl} | {r['seconds']} | "
                  f"{r['cpu_seconds']} | {r.get('note', '')} |")
    atomic_write_text("\n".join(md) + "\n", out / f"llm_{name}.md")
    _plot(rows, dense, out / f"llm_{name}.png", used, args)


def _plot(rows, dense, path, used, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneless.report import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["o-", "s--", "^-.", "v:", "D-", "x--", "P-.", "*:", "h-", "<--", ">-.", "d:"]
    for i, m in enumerate(METHODS):  # every method a line, none dropped by a short style list
        style = styles[i % len(styles)]
        pts = sorted((float(r["removed"]), float(r["ppl"])) for r in rows
                     if r["method"] == m and r["ppl"])
        if pts:
            free = "" if METHODS[m][1] else " (data-free)"
            ax.plot([0.0] + [p[0] for p in pts], [dense] + [p[1] for p in pts], style,
                    label=m + free)
    ax.set_yscale("log")
    ax.set_xlabel("fraction of decoder-block parameters removed")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title(f"{args.model}, {used} tokens, seq_len {args.seq_len}")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path, dpi=120)
