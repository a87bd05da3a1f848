"""torch.fx tracing for models whose forward takes Python decisions on tensor values.

Plain symbolic tracing stops at `if x.shape[1] != self.num_channels`, `int(x.size(-1))` or
`len(x)`: a proxy has no value. Hugging Face models do this everywhere (input checks, patch
grids, padding). `ValueTracer` runs every traced operation on the example inputs as well,
so each proxy carries the value it has there, and a Python decision (bool, int, len,
iteration, numpy on a shape) on a shape, device or dtype takes that value; a tensor's
dtype and device are read as the real objects (C functions such as torch.finfo take no
proxy). Tensor operations stay symbolic;
only those decisions are fixed for the example input's shapes. A decision on tensor data
(`if x.sum() > 0`) is still refused: it would describe the example input only. Module
attributes a forward fills while traced (caches) are put back by tuneless.graph.trace.

The graph serves analysis (channel groups, shapes): a compressed model keeps running its own
forward. Where tuneless does execute the graph (the allocation's shortened trial runs), it
checks the result against the model's own forward and falls back to it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import Node, map_aggregate


class _ValueProxy(fx.Proxy):
    """A proxy whose Python conversions return the traced value's — for values computed
    from shapes, devices and dtypes only: a decision on tensor data (`if x.sum() > 0`)
    would hold for the example input alone, so it stays untraceable."""

    def _value(self) -> Any:
        return self.tracer.decided(self.node)

    def __int__(self) -> int:
        return int(self._value())

    def __index__(self) -> int:
        return operator.index(self._value())

    def __float__(self) -> float:
        return float(self._value())

    def __len__(self) -> int:
        value = self.tracer.value_of(self.node)  # a tensor's length is its first size
        return len(value)

    def __getattr__(self, k: str) -> Any:
        if k in ("dtype", "device"):  # never a channel count; C functions (torch.finfo)
            value = self.tracer.value_of(self.node)  # need the real object
            if isinstance(value, torch.Tensor):
                return getattr(value, k)
        return _ValueAttribute(self, k)  # `len(x.shape)` asks the attribute itself


class _ValueAttribute(_ValueProxy, fx.proxy.Attribute):
    """fx's lazy attribute proxy (`x.shape`, or a method about to be called), carrying its
    value like any other proxy once it is used as a value."""


class ValueTracer(fx.Tracer):
    """Trace `root` called with `example_inputs` (positionally, nothing else), each proxy
    carrying its value on them. `value_tracer(BaseTracer)` keeps another tracer's leaves."""

    def __init__(self, example_inputs: tuple, **kwargs) -> None:
        super().__init__(**kwargs)
        self._pending = list(example_inputs)
        self._values: dict[Node, Any] = {}
        self._from_data: set[Node] = set()  # Python values computed from tensor contents
        self._eager = False  # running a module or reading an attribute for its value

    def trace(self, root, concrete_args=None):  # noqa: D102 — fx's, called positionally
        if concrete_args is not None or not isinstance(root, nn.Module):
            return super().trace(root, concrete_args=concrete_args)
        # Trace `forward(*example_inputs)` as a call with those inputs alone would run: the
        # other parameters keep their real defaults (fx would make each a placeholder, and
        # `labels is not None` would hold), and a decorated forward's own *args/**kwargs
        # wrapper sees plain arguments. The class is swapped for the trace only.
        cls = type(root)
        root.__class__ = type(cls.__name__, (cls,), {"forward": _positional_forward})
        try:
            return super().trace(root)
        finally:
            root.__class__ = cls

    # -- values -----------------------------------------------------------------------
    def decided(self, node: Node) -> Any:
        """The value a Python decision takes; refused when it is tensor data."""
        value = self.value_of(node)
        if isinstance(value, torch.Tensor) or node in self._from_data:
            raise fx.proxy.TraceError(
                "data-dependent control flow: a Python decision on tensor values "
                f"({node.format_node()}) would hold for the example input only")
        return value

    def value_of(self, node: Node) -> Any:
        if node not in self._values and node.op == "get_attr":  # constants fx adds itself
            self._values[node] = self._fetch(node.target)
        return self._values[node]

    def _fetch(self, target: str) -> Any:
        self._eager = True
        try:
            obj = self.root
            for atom in target.split("."):
                obj = getattr(obj, atom)
            return obj
        finally:
            self._eager = False

    def _compute(self, node: Node) -> Any:
        def real(a):
            return map_aggregate(a, lambda x: self.value_of(x) if isinstance(x, Node) else x)

        args, kwargs = real(node.args), real(node.kwargs)
        if node.op == "placeholder":
            if str(node.target).startswith("**"):
                return {}
            if str(node.target).startswith("*"):
                rest, self._pending = tuple(self._pending), []
                return rest
            if self._pending:
                return self._pending.pop(0)
            return node.args[0] if node.args else None  # a default fx recorded
        if node.op == "get_attr":
            return self._fetch(node.target)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            self._eager = True  # the leaf runs for real: no nodes from its inside
            try:
                return self.root.get_submodule(node.target)(*args, **kwargs)
            finally:
                self._eager = False
        return None

    # -- fx hooks ---------------------------------------------------------------------
    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):
        decided = self._numpy_on_shape(kind, target, args, kwargs)
        if decided is not None:
            return decided
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        node = proxy.node
        self._values[node] = value = self._compute(node)
        if value is None and kind != "placeholder":  # `out is not None` must see it: a
            return None  # module or call that gives None (Identity on a missing input)
        if not isinstance(value, torch.Tensor) and not _metadata(node) and any(
                isinstance(self.value_of(n), torch.Tensor) or n in self._from_data
                for n in node.all_input_nodes):  # x.sum().item(), then a comparison
            self._from_data.add(node)
        return proxy

    def _numpy_on_shape(self, kind, target, args, kwargs) -> Any:
        """Numpy computing on a shape (`np.prod(x.shape[1:-1])` calls the proxy's `.prod`,
        which a torch.Size lacks): numpy's result on the shape's value, a shape decision
        like int(size); None for everything else."""
        if kind != "call_method" or not args or not isinstance(args[0], fx.Proxy):
            return None
        node = args[0].node
        value = self._values.get(node)
        if (not isinstance(value, tuple) or hasattr(value, target) or node in self._from_data
                or not all(isinstance(v, int) for v in value)):
            return None
        import numpy as np

        fn = getattr(np, target, None)
        if fn is None:
            return None
        real = map_aggregate((args[1:], kwargs), lambda x: self.decided(x.node)
                             if isinstance(x, fx.Proxy) else x)
        out = fn(np.asarray(value), *real[0], **real[1])
        return out.tolist() if isinstance(out, np.ndarray | np.generic) else out

    def proxy(self, node: Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def call_module(self, m, forward, args, kwargs):
        if self._eager or _built_in_forward(self, m):
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._eager:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.decided(obj.node))

    def iter(self, obj: fx.Proxy):
        return (obj[i] for i in range(len(self.decided(obj.node))))

    def keys(self, obj: fx.Proxy):
        return self.decided(obj.node).keys()


_META_ATTRIBUTES = {"shape", "device", "dtype", "ndim", "layout", "is_cuda", "requires_grad"}
_META_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "get_device",
                 "is_floating_point", "is_contiguous", "element_size"}


def _metadata(node: Node) -> bool:
    """Whether a node reads a tensor's metadata (its shape, device, dtype), not its values."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _META_ATTRIBUTES
    return node.op == "call_method" and node.target in _META_METHODS


def _built_in_forward(tracer: fx.Tracer, m: nn.Module) -> bool:
    """A module without weights that the forward builds and calls on the spot (Perceiver's
    `nn.Softmax(dim=-1)(scores)`): not a submodule, so it is traced through, as its
    function."""
    if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None:
        return False
    try:
        tracer.path_of_module(m)
    except NameError:
        return True
    return False


def _positional_forward(self, *inputs):
    return type(self).__mro__[1].forward(self, *inputs)


def value_tracer(base: type[fx.Tracer]) -> type[ValueTracer]:
    """A ValueTracer that decides leaf modules as `base` does."""
    return type(f"Value{base.__name__}", (ValueTracer, base), {})
