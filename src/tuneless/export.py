"""Export a model for deployment: ONNX (`.onnx`) or torch.export (`.pt2`), checked.

    report = tuneless.export(small, "small.onnx", example_inputs=torch.randn(1, 3, 32, 32))

Before exporting, every BatchNorm that directly follows a conv (the conv's output read by
that BN alone, both called once) is folded into the conv (`torch.nn.utils.fusion.
fuse_conv_bn_eval`) and replaced by nn.Identity, on an eval-mode deep copy: the input
model is never touched. The fused copy must give the same outputs on the example input
(max |difference| ≤ 1e-4 · max(1, max |y|)); a pair that does not is left unfused.

The batch dimension is dynamic. The written file is loaded back (onnxruntime, or
torch.export.load) and run on the same random input at batch 1 and batch 4 as the
original model; a difference above the same limit is an error and nothing is written.
The file is written atomically (tuneless.io_atomic) only after that check.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tuneless._lazy import make_module_callable
from tuneless.errors import TunelessError
from tuneless.graph.trace import is_plain_batchnorm

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
FORMAT_NAMES = {"onnx": "ONNX", "pt2": "torch.export"}
TOLERANCE = 1e-4  # max |difference| allowed, relative to max(1, max |y|)
CHECK_BATCHES = (1, 4)
ONNX_OPSET = 17
_TRACE_BATCH = 2  # export traces at batch 2: a size-1 dimension would be specialised


def export_format(path: str | os.PathLike) -> str:
    """"onnx" or "pt2" from the file name; a one-line error for any other suffix.

    For ONNX, also checks that onnx and onnxruntime are installed, so a command can
    fail before loading the model.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise TunelessError(f"cannot export to {Path(path).name!r}: the file name must end in "
                            f"{' or '.join(FORMATS)} (ONNX or torch.export)")
    fmt = FORMATS[suffix]
    if fmt == "onnx":
        for name in ("onnx", "onnxruntime"):
            _require(name)
    return fmt


def _require(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:  # also a module set to None in sys.modules
        raise TunelessError(f"ONNX export needs {name}, which is not installed: "
                            "pip install 'tuneless[export]'") from None


# --------------------------------------------------------------------------- outputs


def _leaves(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or tuples/lists/dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _leaves(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _leaves(o)]
    raise TunelessError(f"cannot export a model that returns {type(out).__name__}: outputs "
                        "must be tensors (or tuples, lists or dicts of tensors)")


def max_difference(ref: list[torch.Tensor], got: list) -> tuple[float, float]:
    """(max |ref − got| over all outputs, the allowed limit TOLERANCE · max(1, max |ref|))."""
    if len(ref) != len(got):
        raise TunelessError(f"the exported model gives {len(got)} outputs, PyTorch {len(ref)}")
    diff, scale = 0.0, 1.0
    for r, g in zip(ref, got):
        g = torch.as_tensor(g).detach().cpu()
        r = r.detach().cpu()
        if tuple(r.shape) != tuple(g.shape):
            raise TunelessError(f"the exported model gives an output of shape "
                                f"{tuple(g.shape)}, PyTorch {tuple(r.shape)}")
        if r.numel():
            r, g = r.double(), g.double()
            diff = max(diff, float((r - g).abs().max()))
            scale = max(scale, float(r.abs().max()))
    return diff, TOLERANCE * scale


def _run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach() for t in _leaves(model(x))]


def _close(ref: list[torch.Tensor], got: list[torch.Tensor]) -> bool:
    try:
        diff, limit = max_difference(ref, got)
    except TunelessError:
        return False
    return diff <= limit  # NaN compares False


def random_input(x: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal input shaped like `x` but with `batch` samples."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *x.shape[1:], generator=g).to(dtype=x.dtype, device=x.device)


# --------------------------------------------------------------------------- BN fusion


def conv_bn_pairs(model: nn.Module, example_inputs) -> list[tuple[str, str]]:
    """(conv name, BN name) for every BN that reads a conv's output and nothing else does.

    From the torch.fx trace tuneless's channel-group engine uses (tuneless.graph.trace);
    both modules must be called exactly once, and forward must not read their
    parameters directly. Raises UnsupportedModelError when the model cannot be traced.
    """
    from torch.fx import Node

    from tuneless.graph.trace import trace

    gm = trace(model, example_inputs)
    nodes = list(gm.graph.nodes)
    calls = Counter(id(gm.get_submodule(n.target)) for n in nodes if n.op == "call_module")
    read = [str(n.target) for n in nodes if n.op == "get_attr"]
    pairs = []
    for n in nodes:
        if n.op != "call_module" or len(n.args) != 1 or n.kwargs:
            continue
        bn = gm.get_submodule(n.target)
        src = n.args[0]
        if not is_plain_batchnorm(bn) or not isinstance(src, Node):  # no activation inside
            continue
        if src.op != "call_module" or len(src.users) != 1:
            continue
        conv = gm.get_submodule(src.target)
        if not isinstance(conv, nn.modules.conv._ConvNd):
            continue
        if bn.running_var is None or bn.num_features != conv.out_channels:
            continue  # a BN without running statistics normalises with batch statistics
        if calls[id(conv)] != 1 or calls[id(bn)] != 1 or _hooked(conv) or _hooked(bn):
            continue
        if any(r.startswith((f"{src.target}.", f"{n.target}.")) for r in read):
            continue
        pairs.append((str(src.target), str(n.target)))
    return pairs


def _hooked(m: nn.Module) -> bool:
    """Hooks or parametrisations would not survive replacing the module."""
    return bool(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks
                or getattr(m, "parametrizations", None))


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, attr)
    setattr(owner, attr, new)
    return old


@torch.no_grad()
def fuse_conv_bn(model: nn.Module, example_inputs) -> tuple[nn.Module, list[str], str | None]:
    """(eval-mode deep copy with conv→BN pairs fused, fused BN names, note or None).

    Each BN's γ/sqrt(var + eps) scales its conv's output channels and its shift goes
    into the conv bias (torch.nn.utils.fusion.fuse_conv_bn_eval); the BN becomes
    nn.Identity. The copy must match the unfused one on `example_inputs` (max |diff| ≤
    1e-4 · max(1, max |y|)); if all pairs together do not, each pair is tried alone and
    only those that keep the outputs are fused. `model` is not modified.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from tuneless.errors import UnsupportedModelError
    from tuneless.repair import batchnorms

    work = copy.deepcopy(model).eval()
    if not batchnorms(work):
        return work, [], None
    try:
        pairs = conv_bn_pairs(work, example_inputs)
    except UnsupportedModelError as exc:
        return work, [], f"BatchNorm not fused: {exc}"
    if not pairs:
        return work, [], None
    x = example_inputs
    ref = _run(work, x)

    def attempt(chosen: list[tuple[str, str]]) -> bool:
        undo: list[tuple[str, nn.Module]] = []
        try:
            for conv_name, bn_name in chosen:
                conv, bn = work.get_submodule(conv_name), work.get_submodule(bn_name)
                transpose = isinstance(conv, nn.modules.conv._ConvTransposeNd)
                fused = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                undo.append((conv_name, _swap(work, conv_name, fused)))
                undo.append((bn_name, _swap(work, bn_name, nn.Identity())))
            if _close(ref, _run(work, x)):
                return True
        except Exception:  # a pair the library cannot fuse: keep it as it was
            pass
        for name, old in reversed(undo):
            _swap(work, name, old)
        return False

    kept = pairs if attempt(pairs) else [p for p in pairs if attempt([p])]
    note = None
    if len(kept) < len(pairs):
        note = (f"{len(pairs) - len(kept)} conv+BatchNorm pair(s) left unfused: fusing them "
                "changed the outputs")
    return work, [bn for _, bn in kept], note


# --------------------------------------------------------------------------- export


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _export_onnx(model: nn.Module, x: torch.Tensor, n_out: int, batched: list[bool]) -> bytes:
    # The TorchScript-based exporter (dynamo=False): it needs only torch, and handles
    # the conv nets tuneless makes; the dynamo exporter would also need onnxscript.
    out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    axes = {"input": {0: "batch"}}
    axes.update({name: {0: "batch"} for name, b in zip(out_names, batched) if b})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        try:
            torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["input"],
                              output_names=out_names, dynamic_axes=axes,
                              opset_version=ONNX_OPSET, do_constant_folding=True)
        except Exception as exc:
            raise TunelessError(f"ONNX export of {type(model).__name__} failed "
                                f"({type(exc).__name__}: {_one_line(exc)})") from exc
    data = buf.getvalue()
    onnx = _require("onnx")
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        raise TunelessError(f"the ONNX file is invalid ({_one_line(exc)})") from exc
    return data


def _onnx_runner(data: bytes) -> Callable[[torch.Tensor], list]:
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TunelessError(f"onnxruntime cannot load the exported model "
                            f"({_one_line(exc)})") from exc
    name = session.get_inputs()[0].name
    return lambda x: [torch.from_numpy(a) for a in session.run(None, {name: x.cpu().numpy()})]


def _export_pt2(model: nn.Module, x: torch.Tensor) -> bytes:
    batch = torch.export.Dim("batch")
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        buf = io.BytesIO()
        torch.export.save(program, buf)
    except Exception as exc:
        raise TunelessError(f"torch.export of {type(model).__name__} failed "
                            f"({type(exc).__name__}: {_one_line(exc)})") from exc
    return buf.getvalue()


def _pt2_runner(data: bytes) -> Callable[[torch.Tensor], list]:
    try:
        module = torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:
        raise TunelessError(f"torch.export.load cannot read the exported model "
                            f"({_one_line(exc)})") from exc
    return lambda x: _run(module, x)


def _single_input(model: nn.Module, example_inputs) -> torch.Tensor:
    from tuneless.modelio import example_input

    if example_inputs is None:
        return example_input(model)
    if isinstance(example_inputs, tuple | list) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor):
        raise TunelessError("export takes one example input tensor (models with one input)")
    x = example_inputs
    if not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 1:
        raise TunelessError("export needs a floating-point example input with a batch "
                            f"dimension, got {example_inputs.dtype} of shape "
                            f"{tuple(example_inputs.shape)}")
    return x[:1]


PAD_CANDIDATES = (1, 8, 16)  # pad_to="auto": none, and the AVX2 / AVX-512 fp32 widths
AUTO_ROUNDS = 5  # interleaved timing rounds per candidate


def _build(reference: nn.Module, x: torch.Tensor, fmt: str, fuse_bn: bool, pad_to: int | None,
           n_out: int, graph=None) -> dict:
    """The exported bytes of `reference` padded to `pad_to` (None or 1: not padded) and
    BN-fused, with a runner of the written format and what was done (graph: reference's
    channel groups, when already traced)."""
    padded: dict = {}
    work = reference
    if pad_to not in (None, 1):
        from tuneless.padding import pad_channels

        work, padded = pad_channels(reference, x, pad_to, graph=graph)
    fused, note = [], None
    if fuse_bn:
        work, fused, note = fuse_conv_bn(work, x)
    traced = random_input(x, _TRACE_BATCH, seed=1)
    if fmt == "onnx":
        batched = [t.dim() > 0 and t.shape[0] == _TRACE_BATCH for t in _run(work, traced)]
        data = _export_onnx(work, traced, n_out, batched)
        runner = _onnx_runner(data)
    else:
        data = _export_pt2(work, traced)
        runner = _pt2_runner(data)
    return {"data": data, "runner": runner, "padded": padded, "fused": fused, "note": note}


def seconds_per_call(runner: Callable[[torch.Tensor], Any], x: torch.Tensor,
                     min_time: float = 0.05) -> float:
    """Mean wall-clock seconds of runner(x) over as many calls as fill `min_time` (after one
    warm-up call)."""
    import time

    runner(x)
    calls, start = 0, time.perf_counter()
    while True:
        runner(x)
        calls += 1
        spent = time.perf_counter() - start
        if spent >= min_time:
            return spent / calls


def _fastest_padding(reference: nn.Module, x: torch.Tensor, fmt: str, fuse_bn: bool,
                     n_out: int, batch: int) -> tuple[dict, int, dict[int, float]]:
    """pad_to="auto": each of PAD_CANDIDATES that pads differently, exported and timed in
    its runtime on this machine at `batch`, in AUTO_ROUNDS interleaved rounds (so drift in
    the machine's speed hits all alike); the build with the lowest median wins, ties to
    the smaller multiple. Returns (build, multiple, {multiple: median ms})."""
    import statistics

    from tuneless.graph import find_groups
    from tuneless.padding import padding_plan

    graph = find_groups(reference, x)
    builds: dict[int, dict] = {}
    seen: list[dict] = []
    for m in PAD_CANDIDATES:
        plan = padding_plan(graph, m) if m > 1 else {}
        if plan in seen:  # pads exactly as a smaller multiple does
            continue
        seen.append(plan)
        builds[m] = _build(reference, x, fmt, fuse_bn, m, n_out, graph=graph)
    xb = random_input(x, batch, seed=2)
    times: dict[int, list[float]] = {m: [] for m in builds}
    order = list(builds)
    for r in range(AUTO_ROUNDS if len(order) > 1 else 0):
        for m in (order if r % 2 == 0 else order[::-1]):
            times[m].append(seconds_per_call(builds[m]["runner"], xb) * 1000)
    medians = {m: statistics.median(t) for m, t in times.items() if t}
    best = min(medians, key=lambda m: (medians[m], m)) if medians else order[0]
    return builds[best], best, medians


def export(model: nn.Module, path: str | os.PathLike, example_inputs=None,
           fuse_bn: bool = True, pad_to: int | str | None = None,
           timing_batch: int = 1) -> dict:
    """Write `model` to `path` (.onnx or .pt2) with a dynamic batch dimension; check it.

    example_inputs: one input tensor (its batch size does not matter); None takes the
    shape from the model's architecture (tuneless.modelio.default_input_shape). fuse_bn folds
    each conv→BatchNorm pair into the conv first (see fuse_conv_bn). pad_to: append zero
    channels so that every reducible channel group is a multiple of it (tuneless.padding;
    ONNX Runtime's CPU convolutions are fast only on multiples of the CPU's vector width);
    "auto": export unpadded and padded to 8 and to 16, time each in the written format's
    runtime on this machine at batch `timing_batch`, keep the fastest (the right multiple
    depends on the CPU: docs/getting-started.md). Returns a report: path, format, bytes,
    bns_fused (names), padded ({group id: (channels, padded)}), pad_to (the multiple
    used, 1 for none), pad_timings ({multiple: median ms}, with "auto"), max_abs_diff and
    limit per checked batch size, note (why some BNs were not fused, or None). Raises
    TunelessError, writing nothing, if the exported model's outputs differ from the model's.
    """
    from tuneless.io_atomic import atomic_write_bytes, check_target

    if not isinstance(model, nn.Module):
        raise TunelessError(f"export needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(pad_to, str) and pad_to != "auto":
        raise TunelessError(f"pad_to must be a positive integer or 'auto', got {pad_to!r}")
    if not (isinstance(timing_batch, int) and timing_batch >= 1):
        raise TunelessError(f"timing_batch must be a positive integer, got {timing_batch!r}")
    fmt = export_format(path)
    check_target(path)
    x = _single_input(model, example_inputs)
    reference = copy.deepcopy(model).eval()
    try:  # the model must run (and give tensors) before any work
        ref_out = _run(reference, x)
    except TunelessError:
        raise
    except Exception as exc:
        raise TunelessError(f"{type(model).__name__} does not run on the example input of shape "
                            f"{tuple(x.shape)} ({type(exc).__name__}: {_one_line(exc)})") from exc
    timings: dict[int, float] = {}
    if pad_to == "auto":
        built, pad_to, timings = _fastest_padding(reference, x, fmt, fuse_bn, len(ref_out),
                                                  timing_batch)
    else:
        built = _build(reference, x, fmt, fuse_bn, pad_to, len(ref_out))
    data, runner = built["data"], built["runner"]
    diffs, limits = {}, {}
    for b in CHECK_BATCHES:
        xb = random_input(x, b)
        try:
            got = runner(xb)
        except Exception as exc:
            raise TunelessError(f"the exported model does not run at batch {b} "
                                f"({type(exc).__name__}: {_one_line(exc)})") from exc
        diffs[b], limits[b] = max_difference(_run(reference, xb), got)
        if not diffs[b] <= limits[b]:
            raise TunelessError(f"the exported model differs from PyTorch at batch {b}: max "
                                f"|difference| {diffs[b]:.3g} > {limits[b]:.3g}; nothing written")
    atomic_write_bytes(data, path)
    return {"path": str(path), "format": fmt, "bytes": len(data), "bns_fused": built["fused"],
            "padded": built["padded"], "pad_to": pad_to or 1, "pad_timings": timings,
            "max_abs_diff": diffs, "limit": limits, "note": built["note"]}


__all__ = ["CHECK_BATCHES", "FORMATS", "PAD_CANDIDATES", "TOLERANCE", "conv_bn_pairs", "export",
           "export_format", "fuse_conv_bn", "max_difference", "seconds_per_call"]


make_module_callable(__name__)  # `tuneless.export` is both this module and its function
