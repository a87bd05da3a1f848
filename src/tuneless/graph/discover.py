"""Walk a traced graph and find channel groups: what each op does to the channel axis.

Every tensor value gets a Layout (its channel dim and the groups along it) or None
(untracked). An op the rules do not understand fixes the groups of its channel inputs,
with a reason naming the op, so it can never produce a wrong model.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from tuneless.errors import first_line
from tuneless.graph.builder import GroupBuilder
from tuneless.graph.groups import CONSUMER, NORM, PRODUCER, GroupGraph, Slot
from tuneless.graph.layout import Layout
from tuneless.graph.trace import ELEMENTWISE_MODULES as _ELEMENTWISE_MODULES
from tuneless.graph.trace import shape_of, trace
from tuneless.modes import evaluating

_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.LPPool2d, nn.ZeroPad2d, nn.ConstantPad2d,
)
_ELEMENTWISE_FUNCS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.relu, torch.sigmoid,
    torch.tanh, torch.exp, torch.abs, torch.clamp, torch.square, torch.sqrt, torch.rsqrt,
    operator.neg, torch.neg, torch.erf, torch.nn.functional.logsigmoid,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "exp", "abs",
    "neg", "contiguous", "clone", "float", "double", "half", "to", "type_as", "detach", "sqrt",
    "rsqrt", "square", "clamp_min", "clamp_max", "erf", "cpu", "requires_grad_",
}
_SPATIAL_FUNCS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample,
}
_BINARY_FUNCS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_POW = {operator.pow, torch.pow}
_CONV_FOR = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
_LAYER_FUNCS = {*_CONV_FOR, F.linear}
_IGNORED_FUNCS = {getattr, torch._assert, len, isinstance}
# library functions wrapped as fx leaves that act on whole samples or elements
_ELEMENTWISE_BY_NAME = {"stochastic_depth", "drop_path"}


def _op_name(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        return f"{type(model.get_submodule(node.target)).__name__} '{node.target}'"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    mod = getattr(t, "__module__", "") or ""
    name = getattr(t, "__name__", str(t))
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{mod + '.' if mod else ''}{name}"


class ParamRef:
    """A parameter or buffer read directly in forward (layer scales, position embeddings)."""

    def __init__(self, target: str, tensor: torch.Tensor) -> None:
        self.module, _, self.param = target.rpartition(".")
        self.shape = tuple(tensor.shape)


class _Walker:
    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model, self.gm = model, gm
        self.b = GroupBuilder()
        self.env: dict[fx.Node, object] = {}
        self.module_out: dict[str, Layout] = {}  # shared modules write one channel space
        self.module_in: dict[str, Layout] = {}
        self.layer_calls: dict[fx.Node, str] = {}  # F.conv*/F.linear node → its module

    # ---- helpers -------------------------------------------------------------------------
    def val(self, a):
        return self.env.get(a) if isinstance(a, fx.Node) else a

    def input_layouts(self, node: fx.Node) -> list[Layout]:
        out = []
        for a in node.all_input_nodes:
            v = self.env.get(a)
            if isinstance(v, Layout):
                out.append(v)
        return out

    def unsupported(self, node: fx.Node, why: str = "") -> None:
        reason = f"unsupported op {_op_name(node, self.model)} at '{node.name}'"
        reason += f" ({why})" if why else ""
        for lay in self.input_layouts(node):
            self.b.fix_layout(lay, reason)
        self.env[node] = None

    def new_out(self, node: fx.Node, module: str, n: int, dim: int) -> Layout:
        if module in self.module_out:  # a module called twice writes the same channels
            return self.module_out[module].with_dim(dim)
        gid = self.b.new(n)
        lay = Layout(dim, ((gid, n),))
        self.module_out[module] = lay
        return lay

    # ---- walk -----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            try:
                self.visit(node)
            except _Unsupported as exc:
                self.unsupported(node, str(exc))
            except Exception as exc:  # an op form the rules did not foresee: stay safe
                self.unsupported(node, f"tuneless could not analyse it: {type(exc).__name__}")

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            shape = shape_of(node)
            if shape is None or len(shape) < 2:
                self.env[node] = None
                return
            gid = self.b.new(shape[1], f"network input channels ('{node.name}')")
            self.env[node] = Layout(1, ((gid, shape[1]),))
        elif node.op == "get_attr":
            t = _get_attr(self.gm, node.target)
            self.env[node] = ParamRef(node.target, t) if isinstance(t, torch.Tensor) else None
        elif node.op == "output":
            for lay in self.input_layouts(node):
                self.b.fix_layout(lay, "network output")
        elif node.op == "call_module":
            self.visit_module(node, self.gm.get_submodule(node.target))
        elif node.op == "call_function":
            self.visit_function(node)
        elif node.op == "call_method":
            self.visit_method(node)

    # ---- modules --------------------------------------------------------------------------
    def visit_module(self, node: fx.Node, m: nn.Module) -> None:
        name = node.target
        x = self.val(node.args[0]) if node.args else None
        shape = shape_of(node)
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            self.conv(node, name, m, x)
        elif isinstance(m, nn.Linear):
            self.linear(node, name, m, x)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            self.norm(node, name, m, x, dim_must=1, params=_bn_params(m))
        elif isinstance(m, nn.LayerNorm | nn.RMSNorm):
            if len(m.normalized_shape) != 1:
                raise _Unsupported("normalises over more than the channel dimension")
            params = [p for p in ("weight", "bias") if getattr(m, p, None) is not None]
            self.norm(node, name, m, x, dim_must=len(shape) - 1 if shape else -1, params=params)
        elif isinstance(m, nn.GroupNorm):
            params = ["weight", "bias"] if m.affine else []
            if m.num_groups not in (1, m.num_channels) and isinstance(x, Layout):
                # statistics per block of channels: the space shrinks block by block, so
                # every group of the norm keeps its place and count (a grouped conv's rule)
                if len(x.segs) != 1:
                    raise _Unsupported(f"GroupNorm with {m.num_groups} groups reads a "
                                       "concatenation of channel spaces")
                self.b.require_blocks(x.segs[0][0], m.num_groups,
                                      f"GroupNorm '{name}' ({m.num_groups} groups)")
            self.norm(node, name, m, x, dim_must=1, params=params)
        elif isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                self.env[node] = x
            else:
                self.norm(node, name, m, x, dim_must=1, params=["weight"])
        elif isinstance(m, _ELEMENTWISE_MODULES):
            self.env[node] = x
        elif isinstance(m, _SPATIAL_MODULES):
            self.spatial(node, x)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, x, m.start_dim, m.end_dim)
        elif isinstance(m, nn.Softmax | nn.LogSoftmax):
            self.softmax(node, x, m.dim)
        else:
            kind = "with weights" if any(True for _ in m.parameters()) else "without rules"
            raise _Unsupported(f"module {kind} that tuneless does not know how to reduce")

    def conv(self, node, name, m, x) -> None:
        if not isinstance(x, Layout) or x.dim != 1 or x.block != 1:
            # untracked input: its channels are never touched; the output is a fresh space
            if isinstance(x, Layout):
                self.b.fix_layout(x, f"{_op_name(node, self.model)} reads channels from an "
                                     "unexpected dimension")
            if m.groups != 1:
                out = self.new_out(node, name, m.out_channels, 1)
                self.b.fix(out.gids(), f"conv '{name}' (groups={m.groups}) reads an untracked "
                                       "input")
                self.env[node] = out
                return
            x = None
        g = m.groups
        if g == 1:
            if x is not None and self._consume(name, x, node):
                self.b.add_layout_slots(x, lambda gid, off: Slot(CONSUMER, name, "weight", 1, off))
            out = self.new_out(node, name, m.out_channels, 1)
            self._producer_slots(out, name, m)
            self.env[node] = out
        elif g == m.in_channels == m.out_channels:  # depthwise: reads and writes one space
            if name in self.module_out:
                self.b.union_layouts(self.module_out[name], x, f"depthwise conv '{name}'")
            self.module_out[name] = x
            for p in ("weight", "bias"):
                if getattr(m, p, None) is not None:
                    self.b.add_layout_slots(
                        x, lambda gid, off, p=p: Slot(PRODUCER, name, p, 0, off, depthwise=True))
            self.env[node] = x
        else:  # grouped: block b of the rows reads block b of the input channels only
            where = f"grouped conv '{name}' (groups={g})"
            if len(x.segs) == 1 and self._consume(name, x, node):
                self.b.require_blocks(x.segs[0][0], g, where)
                self.b.add_layout_slots(
                    x, lambda gid, off: Slot(CONSUMER, name, "weight", 1, off, groups=g))
            else:
                self.b.fix_layout(x, f"{where} reads a concatenation of channel spaces")
            out = self.new_out(node, name, m.out_channels, 1)
            self.b.require_blocks(out.segs[0][0], g, where)
            self._producer_slots(out, name, m)
            self.env[node] = out

    def linear(self, node, name, m, x) -> None:
        shape = shape_of(node)
        in_shape = shape_of(node.args[0])
        last = len(in_shape) - 1 if in_shape else -1
        dim = len(shape) - 1
        if isinstance(x, Layout) and x.dim != last:
            self.b.fix_layout(x, f"linear '{name}' reads a tensor whose channels are not on "
                                 "the last dimension")
            x = None
        if isinstance(x, Layout) and self._consume(name, x, node):  # untracked: untouched
            blk = x.block
            self.b.add_layout_slots(
                x, lambda gid, off: Slot(CONSUMER, name, "weight", 1, off, block=blk))
        out = self.new_out(node, name, m.out_features, dim)
        self._producer_slots(out, name, m)
        self.env[node] = out

    def _consume(self, name: str, x: Layout, node) -> bool:
        """Record a module's input; a module called again must read the same channel space."""
        prev = self.module_in.get(name)
        if prev is None:
            self.module_in[name] = x
            return True
        return self.b.union_layouts(prev, x, f"module '{name}' called twice") is not None

    def _producer_slots(self, out: Layout, name: str, m: nn.Module) -> None:
        gid = out.segs[0][0]
        slots = [Slot(PRODUCER, name, "weight", 0)]
        if getattr(m, "bias", None) is not None:
            slots.append(Slot(PRODUCER, name, "bias", 0))
        for s in slots:
            self.b.add_slot(gid, s)

    def norm(self, node, name, m, x, dim_must: int, params: list[str]) -> None:
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        if x.dim != dim_must or x.block != 1:
            raise _Unsupported("normalises a dimension that does not hold the channels")
        src = node.args[0]
        producer, relu_producer = self._layer_of(src), None
        if producer is None and self._is_relu(src):
            relu_producer = self._layer_of(src.args[0])
        for p in params:
            self.b.add_layout_slots(
                x, lambda gid, off, p=p: Slot(NORM, name, p, 0, off, producer=producer,
                                              relu_producer=relu_producer))
        self.env[node] = x

    def _layer_of(self, src) -> str | None:
        """The conv/linear module whose call made fx node `src`, if one did."""
        producer = None
        if isinstance(src, fx.Node) and src.op == "call_module":
            sm = self.gm.get_submodule(src.target)
            if isinstance(sm, nn.modules.conv._ConvNd | nn.Linear):
                producer = src.target
        return self.layer_calls.get(src, producer)

    def _is_relu(self, src) -> bool:
        """A ReLU or LeakyReLU node: positively homogeneous, so a cluster's spread shrinks
        by the same factor after it (Fold-AR's repair carries through)."""
        if not isinstance(src, fx.Node) or not src.args:
            return False
        if src.op == "call_module":
            return isinstance(self.gm.get_submodule(src.target), nn.ReLU | nn.LeakyReLU)
        if src.op == "call_function":
            return src.target in (F.relu, F.relu_, torch.relu, torch.relu_, F.leaky_relu,
                                  F.leaky_relu_)
        return src.op == "call_method" and src.target in ("relu", "relu_")

    def spatial(self, node, x) -> None:
        """Pooling / resizing over the dims after the channel dim."""
        if isinstance(x, Layout) and (x.dim != 1 or x.block != 1):
            raise _Unsupported("pools over a dimension that holds channels")
        self.env[node] = x

    def softmax(self, node, x, dim) -> None:
        if isinstance(x, Layout):
            nd = len(shape_of(node))
            if dim is None or dim % nd == x.dim:
                raise _Unsupported("softmax across channels couples them")
        self.env[node] = x

    def flatten(self, node, x, start: int, end: int) -> None:
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        in_shape = shape_of(node.args[0])
        nd = len(in_shape)
        start, end = start % nd, end % nd
        if x.dim < start:
            self.env[node] = x
        elif x.dim > end:
            self.env[node] = x.with_dim(x.dim - (end - start))
        elif x.dim == start:
            inner = math.prod(in_shape[start + 1:end + 1])
            self.env[node] = Layout(start, x.segs, x.block * inner)
        else:
            raise _Unsupported("flattens dimensions in front of the channels into them")

    # ---- functions and methods --------------------------------------------------------------
    def visit_function(self, node: fx.Node) -> None:
        t = node.target
        args = node.args
        if t in _IGNORED_FUNCS or t is operator.getitem and not isinstance(
                self.env.get(args[0]), Layout):
            self.env[node] = None
            return
        if t in _ELEMENTWISE_FUNCS or getattr(t, "__name__", "") in _ELEMENTWISE_BY_NAME:
            self.env[node] = self.val(args[0])
        elif t in _SPATIAL_FUNCS:
            self.spatial(node, self.val(args[0]))
        elif t in _BINARY_FUNCS:
            self.binary(node, args[0], args[1] if len(args) > 1 else node.kwargs.get("other"))
        elif t in _POW:
            if isinstance(args[1], fx.Node):
                raise _Unsupported("power with a tensor exponent")
            self.env[node] = self.val(args[0])
        elif t in (torch.flatten,):
            self.flatten(node, self.val(args[0]), _arg(node, 1, "start_dim", 0),
                         _arg(node, 2, "end_dim", -1))
        elif t in (torch.cat, torch.concat):
            self.cat(node, args[0], _arg(node, 1, "dim", 0))
        elif t is F.pad:
            self.pad(node, self.val(args[0]), _arg(node, 1, "pad", ()))
        elif t in (torch.reshape,):
            self.reshape(node)
        elif t in (torch.permute,):
            self.permute(node, _arg(node, 1, "dims", None))
        elif t in (torch.transpose,):
            self.transpose(node, args[1], args[2])
        elif t is operator.getitem:
            self.getitem(node, args[1])
        elif t in (torch.mean, torch.sum, torch.amax, torch.amin):
            self.reduce_dims(node, _arg(node, 1, "dim", None))
        elif t in (F.softmax, F.log_softmax, torch.softmax):
            self.softmax(node, self.val(args[0]), _arg(node, 1, "dim", None))
        elif t is F.layer_norm:
            self.functional_norm(node, last=True, weight=_arg(node, 2, "weight", None),
                                 bias=_arg(node, 3, "bias", None),
                                 shape=_arg(node, 1, "normalized_shape", ()))
        elif t in (torch.unsqueeze,):
            self.unsqueeze(node, args[1])
        elif t in _LAYER_FUNCS:
            self.own_layer_call(node)
        else:
            raise _Unsupported("")

    def own_layer_call(self, node: fx.Node) -> None:
        """F.conv*/F.linear on a module's own parameters, as a Conv2d subclass with
        TensorFlow-style "same" padding computes itself (EfficientNet ports, timm's
        Conv2dSame): the call is that module, so it folds like one. Anything else that
        reads the weights (weight standardisation, a second use) keeps it unsupported."""
        t, linear = node.target, node.target is F.linear
        w, b = _arg(node, 1, "weight", None), _arg(node, 2, "bias", None)
        if not (isinstance(w, fx.Node) and w.op == "get_attr"
                and w.target.endswith(".weight")):
            raise _Unsupported("its weight is not a module's own parameter")
        name = w.target.rpartition(".")[0]
        m = self.model.get_submodule(name)
        kind = nn.Linear if linear else _CONV_FOR[t]
        if not isinstance(m, kind) or getattr(m, "transposed", False):
            raise _Unsupported(f"'{name}' is not a {kind.__name__}")
        if m.bias is None and b is not None or m.bias is not None and not (
                isinstance(b, fx.Node) and b.op == "get_attr" and b.target == f"{name}.bias"):
            raise _Unsupported(f"its bias is not the bias of '{name}'")
        if not linear and _arg(node, 6, "groups", 1) != m.groups:
            raise _Unsupported(f"its groups differ from those of '{name}'")
        for user_of in (n for n in self.gm.graph.nodes if n.op == "get_attr"
                        and n.target in (f"{name}.weight", f"{name}.bias")):
            if any(u.target is not t or u.args[0] is user_of for u in user_of.users):
                raise _Unsupported(f"the parameters of '{name}' are read by another op")
        x = self.val(node.args[0])
        (self.linear if linear else self.conv)(node, name, m, x)
        self.layer_calls[node] = name

    def visit_method(self, node: fx.Node) -> None:
        t = node.target
        args = node.args
        if t in ("size", "dim", "numel", "type", "get_device"):
            self.env[node] = None
        elif t in _ELEMENTWISE_METHODS:
            self.env[node] = self.val(args[0])
        elif t in _BINARY_METHODS:
            self.binary(node, args[0], args[1] if len(args) > 1 else node.kwargs.get("other"))
        elif t == "pow":
            self.env[node] = self.val(args[0])
        elif t == "flatten":
            self.flatten(node, self.val(args[0]), _arg(node, 1, "start_dim", 0),
                         _arg(node, 2, "end_dim", -1))
        elif t in ("view", "reshape"):
            self.reshape(node)
        elif t in ("view_as", "reshape_as"):
            self.reshape_as(node)
        elif t == "permute":
            dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
            self.permute(node, dims)
        elif t == "transpose":
            self.transpose(node, args[1], args[2])
        elif t in ("mean", "sum", "amax", "amin"):
            self.reduce_dims(node, _arg(node, 1, "dim", None))
        elif t in ("softmax", "log_softmax"):
            self.softmax(node, self.val(args[0]), _arg(node, 1, "dim", None))
        elif t == "unsqueeze":
            self.unsqueeze(node, args[1])
        elif t in ("expand", "expand_as"):
            self.same_shape(node)
        else:
            raise _Unsupported("")

    def same_shape(self, node) -> None:
        x = self.val(node.args[0])
        if isinstance(x, Layout) and shape_of(node) != shape_of(node.args[0]):
            raise _Unsupported("changes the shape")
        self.env[node] = x

    def binary(self, node, a, b) -> None:
        out_shape = shape_of(node)
        va, vb = self.val(a), self.val(b)
        if out_shape is None:
            self.env[node] = None
            return
        nd = len(out_shape)
        lays = []
        for arg, v in ((a, va), (b, vb)):
            if isinstance(v, Layout):
                lays.append(v.with_dim(v.dim + nd - len(shape_of(arg))))
        if not lays:
            self.env[node] = None
            return
        lay = lays[0]
        if len(lays) == 2:
            if lays[0].dim != lays[1].dim:
                raise _Unsupported("combines tensors whose channels are on different dims")
            lay = self.b.union_layouts(lays[0], lays[1], _op_name(node, self.model))
            if lay is None:
                self.env[node] = None
                return
        for arg, v in ((a, va), (b, vb)):
            if isinstance(v, Layout) or not isinstance(arg, fx.Node):
                continue
            shp = v.shape if isinstance(v, ParamRef) else shape_of(arg)
            if shp is None:
                continue
            pos = lay.dim - (nd - len(shp))
            size = shp[pos] if 0 <= pos < len(shp) else 1
            if size == 1:
                continue
            if isinstance(v, ParamRef) and lay.block == 1 and size == lay.channels:
                self.b.add_layout_slots(
                    lay, lambda gid, off, v=v, pos=pos: Slot(NORM, v.module, v.param, pos, off))
            else:
                raise _Unsupported("combines channels with a tensor tuneless does not track")
        self.env[node] = lay

    def cat(self, node, tensors, dim) -> None:
        vals = [self.val(t) for t in tensors]
        nd = len(shape_of(node))
        dim = dim % nd
        if all(isinstance(v, Layout) and v.dim == dim and v.block == 1 for v in vals):
            segs = tuple(s for v in vals for s in v.segs)
            self.env[node] = Layout(dim, segs)
            return
        lays = [v for v in vals if isinstance(v, Layout)]
        if lays and all(isinstance(v, Layout) and v.dim != dim for v in vals):
            out = lays[0]
            for other in lays[1:]:
                out = self.b.union_layouts(out, other, "torch.cat")
                if out is None:
                    break
            self.env[node] = out
            return
        raise _Unsupported("concatenates channel tensors with untracked tensors")

    def pad(self, node, x, pad) -> None:
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        nd = len(shape_of(node))
        k = len(pad) // 2  # pairs apply to the last k dims, last dim first
        from_end = nd - 1 - x.dim
        if from_end < k and (pad[2 * from_end] or pad[2 * from_end + 1]):
            lo, hi = pad[2 * from_end], pad[2 * from_end + 1]
            mode = _arg(node, 2, "mode", "constant")
            value = _arg(node, 3, "value", None)
            if (not isinstance(lo, int) or not isinstance(hi, int) or lo < 0 or hi < 0
                    or x.block != 1 or mode != "constant" or value not in (None, 0, 0.0)):
                raise _Unsupported("pads the channel dimension other than with zero channels")
            # a zero-padding shortcut: the input's channels keep their groups between zero
            # channels whose number the code hard-codes (those stay fixed)
            reason = (f"F.pad at '{node.name}' appends zero channels to the channel "
                      "dimension (zero-padding shortcut): their number is hard-coded")
            lo_seg = ((self.b.new(lo, reason), lo),) if lo else ()
            hi_seg = ((self.b.new(hi, reason), hi),) if hi else ()
            self.env[node] = Layout(x.dim, lo_seg + x.segs + hi_seg)
            return
        self.env[node] = x

    def reshape(self, node) -> None:
        """view/reshape: the channel dim survives as is, or absorbs the dims right after it."""
        x = self.val(node.args[0])
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        ins, outs = shape_of(node.args[0]), shape_of(node)
        before, size = math.prod(ins[:x.dim]), ins[x.dim]
        for p in range(len(outs)):
            if math.prod(outs[:p]) != before:
                continue
            if outs[p] == size:
                self._check_literal(node, p)
                self.env[node] = x.with_dim(p)
                return
            for j in range(x.dim + 2, len(ins) + 1):
                if outs[p] == size * math.prod(ins[x.dim + 1:j]):
                    self._check_literal(node, p)
                    self.env[node] = Layout(p, x.segs, x.block * (outs[p] // size))
                    return
        raise _Unsupported("reshapes the channel dimension")

    def reshape_as(self, node) -> None:
        """view_as/reshape_as(other): a reshape to other's shape, whose channel size is
        other's — so the output's channels must be other's channels on the same dim (LeViT
        reshapes a BatchNorm1d's (B·N, C) output as its (B, N, C) input): one group then,
        shrunk together."""
        x, other = self.val(node.args[0]), self.val(node.args[1])
        if not isinstance(x, Layout):
            if isinstance(other, Layout):
                raise _Unsupported("reshapes an untracked tensor to a tracked one's channels")
            self.env[node] = None
            return
        self.reshape(node)
        lay = self.env[node]
        if not (isinstance(other, Layout) and other.dim == lay.dim):
            raise _Unsupported("reshapes to the shape of a tensor whose channels tuneless "
                               "does not track there")
        self.env[node] = self.b.union_layouts(lay, other, _op_name(node, self.model))

    def _check_literal(self, node, p) -> None:
        shape_args = node.args[1:]
        if len(shape_args) == 1 and isinstance(shape_args[0], tuple | list):
            shape_args = tuple(shape_args[0])
        if p < len(shape_args) and isinstance(shape_args[p], int) and shape_args[p] != -1:
            raise _Unsupported(f"reshape with a constant channel size {shape_args[p]}")

    def permute(self, node, dims) -> None:
        x = self.val(node.args[0])
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        nd = len(shape_of(node))
        dims = [d % nd for d in dims]
        self.env[node] = x.with_dim(dims.index(x.dim))

    def transpose(self, node, d0, d1) -> None:
        x = self.val(node.args[0])
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        nd = len(shape_of(node))
        d0, d1 = d0 % nd, d1 % nd
        dim = d1 if x.dim == d0 else d0 if x.dim == d1 else x.dim
        self.env[node] = x.with_dim(dim)

    def unsqueeze(self, node, d) -> None:
        x = self.val(node.args[0])
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        d = d % len(shape_of(node))
        self.env[node] = x.with_dim(x.dim + 1 if d <= x.dim else x.dim)

    def reduce_dims(self, node, dims) -> None:
        x = self.val(node.args[0])
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        nd = len(shape_of(node.args[0]))
        if dims is None:
            raise _Unsupported("reduces over all dimensions, channels included")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % nd for d in dims]
        if x.dim in dims:
            raise _Unsupported("reduces over the channel dimension")
        keep = len(shape_of(node)) == nd
        self.env[node] = x if keep else x.with_dim(x.dim - sum(d < x.dim for d in dims))

    def getitem(self, node, idx) -> None:
        x = self.val(node.args[0])
        ins = shape_of(node.args[0])
        if not isinstance(idx, tuple):
            idx = (idx,)
        if sum(i is Ellipsis for i in idx) > 1:
            raise _Unsupported("indexing")
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            n_real = sum(i is not None for i in idx) - 1
            idx = idx[:k] + (slice(None),) * (len(ins) - n_real) + idx[k + 1:]
        in_d = out_d = 0
        new_dim = None
        for i in idx:
            if i is None:
                out_d += 1
                continue
            if in_d == x.dim:
                if not (isinstance(i, slice) and i == slice(None)):
                    raise _Unsupported("selects part of the channels")
                new_dim = out_d
            if isinstance(i, slice):
                out_d += 1
            elif not (isinstance(i, int) or isinstance(i, fx.Node) and shape_of(i) is None):
                raise _Unsupported("advanced indexing")
            in_d += 1
        if new_dim is None:
            new_dim = out_d + (x.dim - in_d)
        self.env[node] = x.with_dim(new_dim)

    def functional_norm(self, node, last, weight, bias, shape) -> None:
        x = self.val(node.args[0])
        if not isinstance(x, Layout):
            self.env[node] = None
            return
        nd = len(shape_of(node))
        if len(tuple(shape)) != 1 or x.dim != nd - 1 or x.block != 1:
            raise _Unsupported("normalises a dimension that does not hold only the channels")
        for p in (weight, bias):
            v = self.val(p)
            if isinstance(v, ParamRef):
                self.b.add_layout_slots(
                    x, lambda gid, off, v=v: Slot(NORM, v.module, v.param, 0, off))
            elif p is not None:
                raise _Unsupported("norm parameters are not plain parameters")
        self.env[node] = x


class _Unsupported(Exception):
    pass


def _arg(node: fx.Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _bn_params(m) -> list[str]:
    ps = ["weight", "bias"] if m.affine else []
    if m.track_running_stats and m.running_mean is not None:
        ps += ["running_mean", "running_var"]
    return ps


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def find_groups(model: nn.Module, example_inputs) -> GroupGraph:
    """Find every channel group of `model` from one example input; the model is untouched.

    Groups that an unknown op touches, the network input and the outputs are fixed, each
    with a human-readable reason. Raises UnsupportedModelError if the model cannot be traced.
    """
    gm = trace(model, example_inputs)
    w = _Walker(model, gm)
    w.run()
    groups = w.b.groups()
    _fix_tied_tensors(model, groups)
    graph = GroupGraph(groups=groups, model_name=type(model).__name__)
    if gm.meta.get("value_traced"):
        _fix_groups_that_break_the_forward(model, graph, example_inputs)
    return graph


@torch.no_grad()
def _fix_groups_that_break_the_forward(model: nn.Module, graph: GroupGraph,
                                       example_inputs) -> None:
    """A forward traced through Python decisions on shapes can read a channel count from one
    tensor and shape another with it (FocalNet splits its modulation projection by the
    stream's width): a coupling no graph rule sees. Each reducible group is shrunk alone to
    half and by one block (trials sharing the untouched tensors) and run on the example
    input; a group whose trial fails is fixed, with that reason. Two forward passes per
    group, only for models plain torch.fx could not trace."""
    from tuneless.graph.trace import attributes, restore
    x = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    state = attributes(model)  # trials share the model's caches: put them back after
    try:
        with evaluating(model):
            for g in graph.reducible:
                _probe(model, graph, g, x)
    finally:
        restore(state)


def _probe(model: nn.Module, graph: GroupGraph, g, x: tuple) -> None:
    """Shrink group g alone to half and by one block (an odd count finds sizes that must
    divide evenly) and run each trial; fix g at the first that fails."""
    from tuneless.decisions import top_channels
    from tuneless.reduce import reduce

    score = torch.arange(g.n, 0, -1, dtype=torch.float32)
    for k in sorted({max(g.lowest(), g.n // 2 // g.blocks * g.blocks),
                     max(g.lowest(), g.n - g.blocks)}):
        if k >= g.n:
            continue
        try:
            reduce(model, graph, {g.id: top_channels(score, k, g.blocks)}, share=True)(*x)
        except Exception as exc:  # noqa: BLE001 — whatever breaks, the group stays
            g.fixed = True
            g.reasons.append(f"shrinking it alone breaks the forward ({first_line(exc, 100)}): "
                             "a size the traced Python code reads elsewhere")
            return


def _fix_tied_tensors(model: nn.Module, groups) -> None:
    """A tensor reachable under two names (tied weights) would be rewritten only once."""
    names: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for t_name, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is not None:
                names.setdefault(id(t), []).append(f"{mod_name}.{t_name}".lstrip("."))
    for g in groups:
        for s in g.slots:
            tied = set(names.get(id(s.tensor(model)), []))
            if len(tied) > 1:
                why = f"tensor tied under several names ({', '.join(sorted(tied)[:3])})"
                g.fixed = True
                if why not in g.reasons:
                    g.reasons.append(why)
