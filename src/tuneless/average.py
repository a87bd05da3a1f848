"""Weight averaging of trained checkpoints (a uniform "model soup").

Checkpoints of one architecture that share a training trajectory (a second training cycle
started with `--init` from the first, say) lie in one basin of the loss; the mean of their
weights is often better than either (Wortsman et al. 2022, "Model soups"). Averaged weights
need their own BatchNorm statistics, re-estimated here on the training images as training
fed them. The result is a normal checkpoint whose record names every ingredient (path,
sha256, training arguments), so the manifest can rebuild the whole recipe.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tuneless.checkpoint import (
    file_sha256,
    is_checkpoint,
    model_from_checkpoint,
    read_torch_file,
    save_checkpoint,
)
from tuneless.data.loader import TensorLoader, get_dataset, recipe_pad
from tuneless.errors import TunelessError
from tuneless.evaluate import accuracy
from tuneless.modelcheck import batchnorms


def read_ingredients(paths: Sequence[str | Path]) -> list[dict]:
    """Load and cross-check the checkpoints: same architecture, arguments, dataset and tensors."""
    if len(paths) < 2:
        raise TunelessError(f"averaging needs at least two checkpoints, got {len(paths)}")
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise TunelessError("the same checkpoint is listed twice; each ingredient counts once")
    objs = []
    for p in paths:
        obj = read_torch_file(p)
        if not is_checkpoint(obj):
            raise TunelessError(f"{p} is not a tuneless checkpoint (written by tuneless train)")
        objs.append(obj)
    first, where = objs[0], paths[0]
    for p, obj in zip(paths[1:], objs[1:], strict=True):
        for key in ("arch", "arch_kwargs", "dataset"):
            if obj.get(key) != first.get(key):
                raise TunelessError(
                    f"{p} has {key} {obj.get(key)!r} but {where} has {first.get(key)!r}; "
                    "only checkpoints of one architecture and dataset can be averaged"
                )
        a, b = first["state_dict"], obj["state_dict"]
        if a.keys() != b.keys():
            raise TunelessError(f"{p} and {where} hold different tensors")
        for name in a:
            if a[name].shape != b[name].shape:
                raise TunelessError(
                    f"{p} and {where} differ in {name}: {tuple(b[name].shape)} vs "
                    f"{tuple(a[name].shape)}"
                )
    return objs


def mean_state_dict(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the floating-point tensors; integer buffers come from the first."""
    out = {}
    for name, first in state_dicts[0].items():
        if first.is_floating_point():
            stacked = torch.stack([sd[name].double() for sd in state_dicts])
            out[name] = stacked.mean(0).to(first.dtype)
        else:
            out[name] = first.clone()
    return out


def average_checkpoints(
    paths: Sequence[str | Path],
    out: str | Path,
    data: str | Path | None = None,
    batch_size: int = 128,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Average the checkpoints' weights, re-estimate BatchNorm, measure, write `out`.

    Returns the metadata stored in `out`. The BN pass uses the first ingredient's training
    augmentation (its crop padding), one epoch over the training split in seeded order.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    if any(out.resolve() == Path(p).resolve() for p in paths):
        raise TunelessError(f"-o {out} is one of the inputs; write the average to a new path")
    objs = read_ingredients(paths)
    first = objs[0]
    t0 = time.perf_counter()
    model = model_from_checkpoint(first, str(paths[0]))
    model.load_state_dict(mean_state_dict([o["state_dict"] for o in objs]))
    test_set = get_dataset(first["dataset"], "test", data)
    bn_seconds = 0.0
    if batchnorms(model):  # the training split is only needed to re-measure BatchNorm
        pad = recipe_pad(first.get("train_args"))
        train_set = get_dataset(first["dataset"], "train", data)
        loader = TensorLoader(train_set, batch_size, shuffle=True, augment=pad is not None,
                              pad=pad or 0, seed=seed, drop_last=True)
        t_bn = time.perf_counter()
        torch.optim.swa_utils.update_bn(loader, model)
        bn_seconds = time.perf_counter() - t_bn
    model.eval()
    acc = accuracy(model, test_set, batch_size=500)
    record = {
        "ingredients": [
            {"path": str(p), "sha256": file_sha256(p), "test_accuracy": o.get("test_accuracy"),
             "train_args": o.get("train_args") or {}}
            for p, o in zip(paths, objs, strict=True)
        ],
        "batch_size": batch_size, "seed": seed, "bn_update_s": round(bn_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    each = ", ".join(f"{o.get('test_accuracy') or 0:.4f}" for o in objs)
    log(f"averaged {len(objs)} checkpoints: test accuracy {acc:.4f} (ingredients: {each})")
    # the augmentation recipe stays visible to what reads it (data repairs use the same view)
    recipe = {k: v for k, v in (first.get("train_args") or {}).items() if k in ("augment", "pad")}
    return save_checkpoint(out, model, first["arch"], first.get("arch_kwargs") or {},
                           first["dataset"], train_args={**recipe, "average_record": record},
                           test_accuracy=acc)
