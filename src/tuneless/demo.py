"""The end-to-end demo: a committed checkpoint, compressed without data or fine-tuning, measured.

It is the shortest honest answer to "what does tuneless do": load a trained
network, make it 50% smaller with structured L1 pruning and with Fold-AR, and
show accuracy, size and speed before and after. No training, a few minutes on a CPU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tuneless.errors import TunelessError

PREFERRED = "resnet20-cifar10.pt"
FALLBACKS = ("mlp-fashion-mnist.pt", "lenet5-fashion-mnist.pt")  # the MLP has BN for Fold-AR
DEFAULT_METHODS = ("prune-l1", "fold-ar")


def models_dirs() -> list[Path]:
    """Where committed checkpoints live: ./models, then the repository of this source tree."""
    here = Path(__file__).resolve()
    return [Path.cwd() / "models", here.parents[2] / "models"]


def find_default_checkpoint(say: Callable[[str], None] = print) -> Path:
    """The committed ResNet-20, else a committed Fashion-MNIST model (and say so)."""
    for name in (PREFERRED, *FALLBACKS):
        for d in models_dirs():
            if (d / name).is_file():
                if name != PREFERRED:
                    say(f"note: models/{PREFERRED} is not committed yet; "
                        f"using models/{name} instead")
                return d / name
    looked = ", ".join(str(d) for d in models_dirs())
    raise TunelessError(f"no committed checkpoint found (looked for {PREFERRED} in {looked})")


def compress_all(model: torch.nn.Module, methods: Sequence[str], sparsity: float,
                 example: torch.Tensor, say: Callable[[str], None] = print
                 ) -> list[tuple[str, torch.nn.Module, float]]:
    """(label, compressed model, seconds) per method.

    A method that is not importable yet, or refuses this model, is skipped with a note.
    """
    from tuneless.methods import get_method

    out = []
    for name in methods:
        try:
            fn = get_method(name)
        except (ImportError, AttributeError) as exc:
            say(f"note: skipping {name}: not available in this build ({exc})")
            continue
        t0 = time.perf_counter()
        try:
            small = fn(model, example_inputs=example, sparsity=sparsity)
        except TunelessError as exc:
            say(f"note: skipping {name}: {exc}")
            continue
        out.append((f"{name} {sparsity:.0%}", small, time.perf_counter() - t0))
    return out


def run_demo(checkpoint: str | Path | None = None, methods: Sequence[str] = DEFAULT_METHODS,
             sparsity: float = 0.5, limit: int | None = None, data: str | None = None,
             latency: bool = True, say: Callable[[str], None] = print) -> list[dict]:
    """Run the demo and return its rows (the dense model first); prints as it goes."""
    from tuneless.checkpoint import load_checkpoint
    from tuneless.data.loader import get_dataset
    from tuneless.evaluate import evaluate

    if not 0 < sparsity < 1:
        raise TunelessError(f"sparsity must be between 0 and 1, got {sparsity}")
    path = Path(checkpoint) if checkpoint else find_default_checkpoint(say)
    model = load_checkpoint(path)
    dataset = model.tuneless_meta["dataset"]
    test = get_dataset(dataset, "test", data)
    n = len(test) if limit is None else min(limit, len(test))
    scope = "the full test split" if n == len(test) else f"a seeded random subset of {n}"
    say(f"checkpoint {path.name} ({model.tuneless_meta['arch']}, {dataset}); "
        f"accuracy on {scope} of {len(test)} test images")
    example = test.normalise(test.x[:1])
    recorded = model.tuneless_meta.get("test_accuracy")
    rows = [{"model": "dense", **_measure(evaluate, model, test, example, n, latency),
             "seconds": 0.0}]
    if recorded is not None and n == len(test) and abs(rows[0]["top1"] - recorded) > 1e-3:
        say(f"warning: measured {rows[0]['top1']:.4f}, checkpoint records {recorded:.4f}")
    for label, small, secs in compress_all(model, methods, sparsity, example, say):
        row = {"model": label, **_measure(evaluate, small, test, example, n, latency)}
        row["seconds"] = secs
        rows.append(row)
    base = rows[0]["params"]
    for row in rows:
        row["removed"] = 1 - row["params"] / base
    return rows


def _measure(evaluate, model, test, example, n, latency) -> dict:
    row = evaluate(model, test, example, limit=n, latency_batches=(1, 256) if latency else ())
    row.pop("eval_images", None)
    return row


def print_rows(rows: list[dict], out=None) -> None:
    from tuneless.report import human_bytes, human_count, render_table

    out = out or sys.stdout
    cols = ["model", "top1", "params", "removed", "flops", "weights_bytes",
            "latency_b1_ms", "latency_b256_ms", "seconds"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmts = {"top1": lambda v: f"{100 * v:.2f}%", "removed": lambda v: f"{100 * v:.1f}%",
            "params": human_count, "flops": human_count, "weights_bytes": human_bytes,
            "latency_b1_ms": ".2f", "latency_b256_ms": ".1f", "seconds": ".1f"}
    print(render_table(rows, cols, fmts), file=out)
    print("seconds = time to compress (no data, no fine-tuning); latency on 1 CPU thread",
          file=out)
