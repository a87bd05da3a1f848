"""Every torchvision classification model through fold (data-free Fold-AR default) and
structured L1 pruning at 30% of the parameters (issue 22 item 4). Random weights
(no downloads), num_classes=10, small inputs; each model in its own process with a time
limit, one thread. Writes docs/breadth-torchvision.md (and a JSONL of the rows).
`--library timm` runs TIMM_MODELS, `--library transformers` every model type transformers
maps to an image classifier (default configs, tuneless.hf_vision.ImageClassifier).

    python benchmarks/breadth_torchvision.py [--out docs/breadth-torchvision.md]
        [--only NAME ...] [--limit-s 900] [--library torchvision|timm|transformers]

Rows go to docs/breadth-torchvision.jsonl as they finish; rerunning resumes from it
(delete a model's line to measure it again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# inputs that differ from 1×3×64×64, and constructor options (no auxiliary heads)
SHAPES = {"maxvit_t": 224, "inception_v3": 96, "vit_h_14": 56}  # vit_h_14: its 14-px patches
KWARGS = {"inception_v3": {"aux_logits": False, "init_weights": False},
          "googlenet": {"aux_logits": False, "init_weights": False},
          "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64},
          "vit_l_16": {"image_size": 64}, "vit_l_32": {"image_size": 64},
          "vit_h_14": {"image_size": 56}}


# --library timm: one model of each family timm is used for (CNNs, hybrids, ViT-likes,
# MLP-mixers), at their smallest size; none of them was looked at before the list was made
TIMM_MODELS = (
    "resnet18", "resnet50d", "seresnext26d_32x4d", "resnest14d", "skresnet18", "res2net50_14w_8s",
    "efficientnet_b0", "efficientnetv2_rw_t", "tf_efficientnet_lite0", "mobilenetv3_large_100",
    "mobilenetv2_100", "mnasnet_100", "fbnetc_100", "tinynet_a", "lcnet_050", "ghostnet_100",
    "regnetx_002", "regnety_002", "regnetz_b16", "rexnet_100", "densenet121", "dla34",
    "dpn48b", "hrnet_w18_small", "cspresnet50", "cspdarknet53", "ese_vovnet19b_dw",
    "xception41", "inception_v3", "selecsls42b", "gernet_s", "repvgg_a0", "mobileone_s0",
    "hgnet_tiny", "convnext_atto", "convnextv2_atto", "edgenext_xx_small", "mobilevit_xxs",
    "efficientformer_l1", "fastvit_t8", "poolformer_s12", "levit_128s",
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
    "resmlp_12_224", "mixer_s32_224", "nf_resnet26",
)


def build(name: str, library: str):
    """(model, input) with random weights and 10 classes: torchvision at SHAPES / 64 px,
    timm at 64 px where the model runs on it, else at its own default input size."""
    import torch

    torch.manual_seed(0)
    if library == "torchvision":
        import torchvision

        size = SHAPES.get(name, 64)
        model = torchvision.models.get_model(name, weights=None, num_classes=10,
                                             **KWARGS.get(name, {})).eval()
        return model, torch.randn(1, 3, size, size)
    if library == "transformers":  # the default config of a model type, 64 px if it runs
        import transformers as tf
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as classes,
        )

        from tuneless.hf_vision import build_image_classifier, input_shape

        first = classes[name] if isinstance(classes[name], str) else classes[name][0]
        # a model type with several classifier classes (DeiT, LeViT) picks by architectures
        cfg = tf.AutoConfig.for_model(name, num_labels=10, architectures=[first])

        def fresh():
            torch.manual_seed(0)
            return build_image_classifier(cfg.to_dict())  # what tuneless.load rebuilds

        model = fresh()
        c, h, w = input_shape(cfg.to_dict())
        x = torch.randn(1, c, 64, 64)
        try:
            with torch.no_grad():
                model(x)
        except Exception:  # noqa: BLE001 — fixed-size models (position tables, windows)
            x = torch.randn(1, c, h, w)
            model = fresh()  # the failed call may have changed it (Swin shrinks its window)
        return model, x
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 — fixed-size models (patch grids, windows)
        x = torch.randn(1, *model.default_cfg["input_size"])
    return model, x


def one(name: str, library: str = "torchvision") -> dict:
    """Fold and prune one model; a row of what happened (errors as their first line)."""
    import torch

    import tuneless

    torch.set_num_threads(1)
    model, x = build(name, library)
    size = x.shape[-1]
    with torch.no_grad():
        y = model(x)
    row = {"model": name, "input": size, "params": sum(p.numel() for p in model.parameters())}
    try:  # every group rewritten with all its channels: the engine must change nothing
        same = tuneless.prune(model, channel_ratio=0.0, example_inputs=x).eval()
        with torch.no_grad():
            row["rewrite_exact"] = "yes" if torch.allclose(same(x), y, atol=1e-5) else "NO"
    except Exception as exc:  # noqa: BLE001
        row["rewrite_exact"] = "no: " + (str(exc).strip().splitlines() or ["?"])[0][:80]
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for method in ("fold", "prune"):
        # Fold-AR repairs BatchNorm statistics; without BN the default fold has no repair
        if method == "fold" and not has_bn:
            row["note"] = "no BatchNorm: the default fold is Fold-Naive"
        t0 = time.perf_counter()
        try:
            small = getattr(tuneless, method)(model, sparsity=0.3, example_inputs=x).eval()
            with torch.no_grad():
                ys = small(x)
            after = sum(p.numel() for p in small.parameters())
            ok = ys.shape == y.shape and bool(torch.isfinite(ys).all())
            row[f"{method}_removed"] = round(1 - after / row["params"], 4)
            if method == "fold":  # allocation="auto": measured widths or uniform (cost)
                row["fold_widths"] = small.tuneless_report.get("allocation", "?")
            row[method] = "yes" if ok and abs(1 - after / row["params"] - 0.3) <= 0.02 else \
                f"ran, removed {1 - after / row['params']:.3f}"
        except Exception as exc:  # the table shows failures with their reason
            row[method] = "no: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:110]
        row[f"{method}_s"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/breadth-torchvision.md")
    p.add_argument("--only", nargs="*")
    p.add_argument("--limit-s", type=int, default=900)
    p.add_argument("--conditions", default="the machine otherwise idle",
                   help="what else ran while timing (printed beside the seconds)")
    p.add_argument("--library", choices=["torchvision", "timm", "transformers"],
                   default="torchvision",
                   help="timm: the TIMM_MODELS list (default --out docs/breadth-timm.md); "
                        "transformers: its image-classification model types "
                        "(docs/breadth-transformers.md)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.library)), flush=True)
        return 0
    if args.library != "torchvision" and args.out == p.get_default("out"):
        args.out = f"docs/breadth-{args.library}.md"

    from tuneless.io_atomic import atomic_write_text
    from tuneless.provenance import stamp, stamp_markdown
    from tuneless.report import render_markdown

    if args.only:
        names = args.only
    elif args.library == "timm":
        names = list(TIMM_MODELS)
    elif args.library == "transformers":
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as names_of,
        )

        names = sorted(names_of)
    else:
        import torchvision

        names = sorted(torchvision.models.list_models(module=torchvision.models))
    log = Path(args.out).with_suffix(".jsonl")
    done_rows = {}  # rerunning the command resumes: rows already in the log are kept
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done_rows[row["model"]] = row
    rows = [done_rows[n] for n in names if n in done_rows]
    for name in names:
        if name in done_rows:
            continue
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name, "--library",
                                   args.library], capture_output=True, text=True,
                                  timeout=args.limit_s)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            last = last.removeprefix("tuneless.errors.TunelessError: ")[:110]
            row = json.loads(lines[-1]) if lines else {"model": name, "fold": "no: " + last}
        except subprocess.TimeoutExpired:
            row = {"model": name, "fold": f"no: over {args.limit_s} s", "prune": "not run"}
        print(json.dumps(row), flush=True)
        rows.append(row)
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    rows.sort(key=lambda r: names.index(r["model"]))
    folded = sum(r.get("fold") == "yes" for r in rows)
    pruned = sum(r.get("prune") == "yes" for r in rows)
    exact = sum(r.get("rewrite_exact") == "yes" for r in rows)
    command = "python benchmarks/breadth_torchvision.py" + (
        f" --library {args.library}" if args.library != "torchvision" else "")
    s = stamp(command=command)
    which = {"torchvision": "every model `torchvision.models.list_models` lists for\n"
             "classification; random weights, num_classes=10, input 1×3×64×64 unless the\n"
             "table says otherwise (ViTs built for that size)",
             "timm": "one timm model of each family (`TIMM_MODELS` in the script, chosen\n"
                     "before any was run); random weights, num_classes=10, input 1×3×64×64\n"
                     "where the model runs on it, else its own default size",
             "transformers": "every model type transformers maps to an image classifier\n"
                             "(its default config, random weights, num_labels=10, wrapped by\n"
                             "`tuneless.hf_vision.ImageClassifier`); input 1×C×64×64 where\n"
                             "the model runs on it, else its config's image size"}[args.library]
    title = {"torchvision": "every torchvision classification model", "timm": "timm models",
             "transformers": "transformers image classifiers"}[args.library]
    text = (f"# Breadth: {title}\n\n"
            "`tuneless.fold` (the data-free default, Fold-AR; `fold_widths`: what its default\n"
            "allocation chose, measured per group or uniform) and `tuneless.prune` (L1) at 30%\n"
            f"of the parameters on {which}; a model passes when the result\n"
            "runs, keeps the output shape, stays finite and removes 30% ± 2 points;\n"
            "`rewrite_exact`: every group rewritten with all its channels gives the same\n"
            "outputs (within 1e-5). Seconds are\n"
            f"wall time on one thread ({args.conditions}); each model runs in a process of\n"
            "its own. For comparison, Torch-Pruning reports 77 of 85\n"
            "torchvision models pruned in its own benchmark.\n\n"
            + stamp_markdown(s) + "\n"
            f"**fold: {folded} / {len(rows)}; prune: {pruned} / {len(rows)}; exact rewrite: "
            f"{exact} / {len(rows)}.**\n\n"
            + render_markdown(rows, ["model", "input", "params", "fold", "fold_removed",
                                     "fold_widths", "fold_s", "prune", "prune_removed",
                                     "prune_s", "rewrite_exact", "note"])
            + "\n")
    atomic_write_text(text, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
