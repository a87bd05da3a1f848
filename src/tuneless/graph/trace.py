"""Trace a model with torch.fx and record its real tensor shapes on an example input."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from tuneless.errors import UnsupportedModelError
from tuneless.graph.value_trace import ValueTracer, value_tracer
from tuneless.modes import evaluating

# modules that act on each element alone: channels stay apart through them
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid,
)


class _Tracer(fx.Tracer):
    """torch.nn modules are leaves; user modules (and Sequential) are traced through, but
    for BatchNorm subclasses that add elementwise layers (`is_norm_act`)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (super().is_leaf_module(m, qualname) or is_plain_batchnorm(m) or is_norm_act(m)
                or (type(m).__module__, type(m).__qualname__) in SAME_PADDING_CONVS)


# Conv subclasses from other libraries that pad from the input's size at run time (Python
# control flow fx cannot trace) and then run a plain convolution on their own weight: the
# padding does not depend on channels, so they are reduced as the conv they are. Listed by
# name, not by subclass: other conv subclasses transform their weight per output channel
# over the input channels (weight standardisation), which channel reduction would change.
SAME_PADDING_CONVS = {("timm.layers.conv2d_same", "Conv2dSame")}


def is_plain_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm whose output is its affine normalisation and nothing more: torch's own
    forward (a subclass that does not override it counts too). Fusing into a conv,
    statistics matching and the refit's BN handling rely on it."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and _torch_forward(m)


def _torch_forward(m: nn.Module) -> bool:
    """Whether m runs torch's own forward (a subclass that does not override it counts)."""
    return type(m).forward.__module__.startswith("torch.")


def is_norm_act(m: nn.Module) -> bool:
    """A BatchNorm or GroupNorm subclass from another library whose forward is the norm
    followed by its own elementwise layers (timm's BatchNormAct2d / GroupNormAct: dropout,
    then an activation; transformers' BiT GroupNorm + activation). Channels stay apart, so
    it is one leaf, reduced like its norm; traced through, its functional norm on
    attributes would fix every group it touches."""
    children = list(m.children())
    norm = isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and not _torch_forward(m)
    return norm and bool(children) and all(isinstance(c, ELEMENTWISE_MODULES) for c in children)


@torch.no_grad()
def trace(model: nn.Module, example_inputs) -> fx.GraphModule:
    """A GraphModule sharing `model`'s submodules, with node.meta['tensor_meta'] filled in.

    Runs in eval mode (no running-stat updates) and restores every module's mode, so the
    model is left exactly as it was.
    """
    if not isinstance(example_inputs, tuple | list):
        example_inputs = (example_inputs,)
    with evaluating(model):
        state = attributes(model)  # tracing can leave proxies in a module's caches
        try:
            tracer = _Tracer()
            try:
                graph = tracer.trace(model)
            except Exception as exc:  # fx raises many types; the user needs one line
                restore(state)
                # Python decisions on tensor values (Hugging Face input checks, int(size)):
                # trace again with every proxy carrying its value on the example inputs
                tracer = value_tracer(_Tracer)(tuple(example_inputs))
                try:
                    graph = tracer.trace(model)
                except Exception:  # noqa: BLE001 — the plain tracer's error is the clearer one
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise UnsupportedModelError(
                        f"cannot trace {type(model).__name__} with torch.fx "
                        f"({type(exc).__name__}: {msg})") from exc
            gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
            gm.meta["value_traced"] = isinstance(tracer, ValueTracer)  # shape decisions fixed
            restore(state)  # after the GraphModule took its constants from the root
            try:
                ShapeProp(gm).propagate(*example_inputs)
            except Exception as exc:
                err = exc
                try:  # the model's own forward gives the plainer error when it fails too
                    model(*example_inputs)
                except Exception as own:
                    err = own
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise UnsupportedModelError(
                    f"{type(model).__name__} does not run on the example input ({msg})"
                ) from err
        finally:
            restore(state)
    return gm


_TORCH_SLOTS = {"_parameters", "_buffers", "_modules", "training"}


def attributes(model: nn.Module) -> list[tuple[nn.Module, dict]]:
    """Every module's plain attributes, containers copied one level deep: a forward that
    caches into a dict (LeViT's attention biases) would keep the tracer's proxies there,
    and fx adds its tensor constants to the root."""
    return [(m, {k: _copy(v) for k, v in vars(m).items() if k not in _TORCH_SLOTS})
            for m in model.modules()]


def _copy(v):
    return type(v)(v) if type(v) in (dict, list, set) else v


def restore(state: list[tuple[nn.Module, dict]]) -> None:
    """Put the attributes back, containers as fresh copies (a later trace may fill them)."""
    for m, saved in state:
        attrs = vars(m)
        for k in [k for k in attrs if k not in saved and k not in _TORCH_SLOTS]:
            del attrs[k]
        attrs.update({k: _copy(v) for k, v in saved.items()})


def shape_of(node) -> tuple[int, ...] | None:
    """The traced tensor shape of a node's value, or None if it is not a single tensor."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape)
