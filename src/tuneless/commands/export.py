"""`tuneless export MODEL -o OUT.onnx|OUT.pt2`: BN folded into convs, exported, checked."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tuneless.commands.model_args import add_model_arguments, load_from_args
from tuneless.errors import TunelessError
from tuneless.options import int_or_auto


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (.onnx) or torch.export (.pt2)")
    add_model_arguments(p)
    p.add_argument("-o", "--out", required=True,
                   help="output file: NAME.onnx (ONNX, checked with onnxruntime) or NAME.pt2 "
                        "(torch.export, checked with torch.export.load)")
    p.add_argument("--no-fuse-bn", action="store_true",
                   help="keep BatchNorm layers (default: fold each BN that follows a conv "
                        "into the conv)")
    p.add_argument("--pad-to", type=int_or_auto, metavar="N|auto",
                   help="append zero channels so that every reducible channel count is a "
                        "multiple of N (same outputs; ONNX Runtime's CPU convolutions are "
                        "fast only on multiples of the CPU's vector width: "
                        "docs/getting-started.md); auto: time unpadded, 8 and 16 in the "
                        "output's runtime on this machine and keep the fastest")
    p.add_argument("--timing-batch", type=int, default=1, metavar="B",
                   help="batch size --pad-to auto times at (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.export import CHECK_BATCHES, FORMAT_NAMES, TOLERANCE, export, export_format
    from tuneless.report import human_bytes

    torch.set_num_threads(max(1, args.threads))
    if _same_file(args.out, args.model):
        raise TunelessError("-o would overwrite the input model; choose another path")
    fmt = export_format(args.out)  # suffix and (for ONNX) onnx/onnxruntime, before loading
    model, x = load_from_args(args)
    report = export(model, args.out, example_inputs=x, fuse_bn=not args.no_fuse_bn,
                    pad_to=args.pad_to, timing_batch=args.timing_batch)
    fused = len(report["bns_fused"])
    bn_text = ("BatchNorm kept (--no-fuse-bn)" if args.no_fuse_bn else
               f"{fused} BatchNorm layer{'s' if fused != 1 else ''} fused into convs")
    print(f"wrote {args.out} ({FORMAT_NAMES[fmt]}, {human_bytes(report['bytes'])}, "
          f"input {tuple(x.shape[1:])} with a dynamic batch); {bn_text}")
    if report["pad_timings"]:
        times = " / ".join(f"{t:.3g}" for t in report["pad_timings"].values())
        names = "/".join("unpadded" if m == 1 else str(m) for m in report["pad_timings"])
        print(f"--pad-to auto: {names} ran in {times} ms at batch {args.timing_batch} on this "
              f"machine; kept {'unpadded' if report['pad_to'] == 1 else report['pad_to']}")
    if report["padded"]:
        widths = ", ".join(f"{n}→{m}" for n, m in report["padded"].values())
        print(f"padded {len(report['padded'])} channel groups with zero channels: {widths}")
    elif args.pad_to and args.pad_to != "auto":
        print(f"no channel group needed padding (all multiples of {args.pad_to})")
    if report["note"]:
        print(f"note: {report['note']}")
    diffs = ", ".join(f"{report['max_abs_diff'][b]:.2e} at batch {b}" for b in CHECK_BATCHES)
    print(f"max |difference| vs PyTorch: {diffs} (allowed {TOLERANCE:g} x max(1, max |y|))")
    return 0
