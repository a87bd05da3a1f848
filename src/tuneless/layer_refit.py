"""Least-squares repair of a compressed CNN: refit every layer, in order, on real images.

Folding and pruning leave each small layer computing a projection of what the big one
computed. With a few hundred images the best linear layer is a closed form: walking
the network in forward order, each conv/linear of the small model is re-solved so that,
on the inputs the *small* model actually feeds it (earlier refits included, so errors do
not pile up), it reproduces the *original* layer's output mapped onto the small
channels (cluster means for folding, the kept channels for pruning), BatchNorm
included: the layer and its BN form one affine map, solved together; the BN is left as
the identity plus the fitted bias. This is the reconstruction step of channel-pruning
methods (He et al. 2017) and the CNN counterpart of `tuneless.llm.refit`: no gradient
steps, no fine-tuning.

Where a merged group's channels pass a ReLU (or ReLU6) before anything reads them, the
consumers should see the mean of the members *after* the clamp, not the clamp of their
mean (which drops every member that fires while the average does not): such a layer is
refitted so that its clamped output is that mean. Which clamp follows is measured, not
assumed (clamping the layer's output first must leave every consumer's input unchanged).
That target is not linear in the layer's input, so it is used only where the fit has
many more rows than unknowns (convolutions, not a fully connected layer on a thousand
images, which would fit the sample instead of the function).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from tuneless.decisions import merge, selection
from tuneless.errors import TunelessError
from tuneless.graph.trace import is_plain_batchnorm
from tuneless.hooks import capture
from tuneless.linalg import ridge_solve
from tuneless.modes import evaluating
from tuneless.patches import conv_patches


def channel_maps_from_labels(labels: dict) -> dict[int, torch.Tensor]:
    """{group id: M (k × n)} with M[c] the mean over cluster c's original channels."""
    return {int(gid): merge(lab)[0] for gid, lab in labels.items()}


def channel_maps_from_indices(indices: dict, sizes: dict) -> dict[int, torch.Tensor]:
    """{group id: M (k × n)} selecting the kept channels (pruning) in ascending order, the
    order `tuneless.reduce` keeps them in whatever order the report lists them (prune
    lists them by importance)."""
    return {int(gid): selection(keep, sizes[int(gid)])[0] for gid, keep in indices.items()}


def refit(original: nn.Module, small: nn.Module, data, *, example_inputs=None,
          **options) -> nn.Module:
    """Refit a model that tuneless folded or structurally pruned from `original`.

    The channel maps come from `small.tuneless_report` (fold: cluster labels; prune: kept
    channels); options go to `refit_layers` (num_images, batch_size, ridge, inplace).
    """
    from tuneless.data.loader import check_images_fit
    from tuneless.modelio import example_input

    x = example_inputs if example_inputs is not None else example_input(original)
    check_images_fit(data, x)
    graph, maps = maps_from_report(original, small, x)
    return refit_layers(original, small, graph, maps, data, **options)


def maps_from_report(original: nn.Module, small: nn.Module, example_inputs=None):
    """(graph of `original`, {group id: (k × n) map}) for a model tuneless folded or pruned
    from it, read from `small.tuneless_report`."""
    from tuneless.graph import find_groups
    from tuneless.modelio import example_input

    report = getattr(small, "tuneless_report", None) or {}
    x = example_inputs if example_inputs is not None else example_input(original)
    graph = find_groups(original, x)
    if "labels" not in report and "channels" not in report:
        raise TunelessError("this repair needs a model compressed by tuneless.fold or "
                            "tuneless.prune (its tuneless_report names the channels it kept "
                            "or merged)")
    sizes = {g.id: g.n for g in graph.groups}
    named = report.get("labels") or report.get("channels") or {}
    for gid, entry in named.items():
        n = sizes.get(int(gid))
        fits = n is not None and (len(entry) == n if "labels" in report
                                  else all(0 <= int(i) < n for i in entry))
        if not fits:
            raise TunelessError(
                f"the compressed model was not made from this original: its report names "
                f"channel group {gid} ({len(entry)} entries), which the original "
                f"{'lacks' if n is None else f'has with {n} channels'}")
    if "labels" in report:
        maps = channel_maps_from_labels(report["labels"])
    else:
        maps = channel_maps_from_indices(report["channels"], sizes)
    return graph, maps


TARGET_CACHE_BYTES = 2 * 2**30  # keep the original's targets in memory up to this size


@torch.no_grad()
def refit_layers(original: nn.Module, small: nn.Module, graph, maps: dict[int, torch.Tensor],
                 data, *, num_images: int | None = 1024, batch_size: int = 64,
                 ridge: float = 1e-4, inplace: bool = False,
                 cache_bytes: int = TARGET_CACHE_BYTES) -> nn.Module:
    """Refit every conv (groups = 1) and linear of `small` to the original's outputs.

    graph: the channel groups of `original` (tuneless.find_groups); maps: for each group
    whose channels changed, the (k × n) matrix expressing the small model's channels in
    the original's. data: images (tensor, loader or TensorDataset), the first
    `num_images` used. ridge: Tikhonov weight relative to the mean diagonal of XᵀX.
    cache_bytes: the original's targets are kept in memory up to this many bytes: the
    layers are refitted in runs whose targets fit, each run costing one forward pass of
    the original per batch and one pass of the small model (linear in depth); a layer whose
    targets alone exceed it has both models run a partial pass per batch for it alone.
    Returns the refitted model and sets `refit_report` on it (layers refitted / skipped /
    whose merged channels were targeted after the clamp that follows them).
    """
    from tuneless.data.loader import image_batches

    if ridge < 0:
        raise TunelessError(f"ridge must be ≥ 0, got {ridge}")
    small = small if inplace else copy.deepcopy(small)
    from tuneless.distributed import my_batches

    batches = list(my_batches(image_batches(data, batch_size, num_images)))  # this rank's
    mine = sum(len(b) for b in batches)  # this process's images (its targets, its rows)
    if mine < 2:
        raise TunelessError("the least-squares refit needs at least 2 images")
    outputs, norm_after = _layout(graph)
    done, skipped = [], []
    with evaluating(original), evaluating(small):  # every module's own mode restored after
        plan = []  # (layer name, norm after it, its _Target) of every layer to refit
        readers = _consumers(graph)
        from tuneless.distributed import all_sum

        images = int(all_sum(torch.tensor(mine)))  # all ranks'
        rows = _forward_order(original, batches[0][:1])  # per layer: rows one image gives
        for name, per_image in rows.items():
            layer = small.get_submodule(name)
            why = _unsupported(layer, original.get_submodule(name), norm_after.get(name), small,
                               lambda name=name: _capture(small, name, batches[0][:1], "input"))
            out_map = channel_map(name, layer, outputs, maps)
            if why is None and out_map is None:
                why = "its output channels span several groups"
            if why is not None:
                skipped.append(f"{name}: {why}")
            else:
                norm = norm_after.get(name)
                fits = _rows_enough(original.get_submodule(name), per_image * images)
                clamp = (_clamp_after(original, norm or name, readers.get(name, []),
                                      batches[0][:_PROBE_IMAGES])
                         if _merges(out_map) and fits else None)
                plan.append((name, norm, _Target(out_map, clamp)))
        from tuneless.progress import Ticker

        ticker = Ticker(len(plan), desc="refit", unit="layer")
        for chunk, fits in _chunks(original, plan, rows, mine, cache_bytes):
            cache = _cached_targets(original, chunk, batches) if fits else None
            if cache is not None:
                _refit_in_one_pass(small, chunk, batches, cache, ridge, ticker)
            else:
                for name, norm, target in chunk:
                    pairs = _pairs(original, small, name, norm, target, batches)
                    _solve_layer(small, name, norm, pairs, ridge)
                    ticker.update()
            done.extend(name for name, _, _ in chunk)
        ticker.close()
    small.refit_report = {"refitted": done, "skipped": skipped,
                          "clamped": [name for name, _, t in plan if t.clamp is not None],
                          "images": mine, "ridge": ridge}
    return small


def _layout(graph) -> tuple[dict[str, list], dict[str, str]]:
    """Per producer: its output spans (channel_spans); per producer: the norm right after."""
    norm_after = {s.producer: s.module for g in graph.groups for s in g.norms
                  if s.param == "weight" and s.producer is not None}
    return channel_spans(graph, "producer"), norm_after


def channel_spans(graph, kind: str) -> dict[str, list]:
    """Per module with `kind` slots ("producer": the channels a conv/linear writes, "norm":
    a norm's features): the (group id, offset, n, block) spans of its weight's first axis,
    the layout `channel_map` reads (a norm on a concatenation spans several groups)."""
    spans: dict[str, list] = {}
    for g in graph.groups:
        for s in g.slots:
            if s.kind == kind and s.param == "weight" and s.axis == 0:
                spans.setdefault(s.module, []).append((g.id, s.offset, g.n, s.block))
    return spans


def _forward_order(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Conv and linear layers in the order the forward pass first runs them, each with the
    least-squares rows one input gives it (its output positions: H·W for a conv)."""
    order: dict[str, int] = {}

    def seen(module, out, name):
        channels = out.shape[1] if isinstance(module, nn.Conv2d) else out.shape[-1]
        order.setdefault(name, out.numel() // max(1, len(x) * channels))

    hooks = [m.register_forward_hook(lambda m, _a, out, n=n: seen(m, out, n))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _unsupported(layer: nn.Module, before: nn.Module, norm: str | None,
                 small: nn.Module, layer_input) -> str | None:
    """Why `layer` cannot be refitted, or None. layer_input() gives an input it sees, to
    probe a conv subclass with its own forward (run only for those)."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return "grouped/depthwise conv (refit per group not implemented)"
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        return f"padding_mode {layer.padding_mode!r}"
    if isinstance(layer, nn.Conv2d) and type(layer).forward is not nn.Conv2d.forward \
            and conv_patches(layer, layer_input()) is None:
        return "its forward does not run a zero-padded conv2d on its own weight"
    if type(layer) is not type(before):
        return "layer type changed by compression"
    if norm is not None:
        bn = small.get_submodule(norm)
        if not is_plain_batchnorm(bn) or not bn.affine \
                or not bn.track_running_stats:
            return "its norm is not an affine BatchNorm with running statistics"
    return None


def channel_map(name: str, layer: nn.Module, spans: dict, maps: dict) -> torch.Tensor | None:
    """(small × original) map of the channels a layer writes (a conv/linear's outputs, a
    norm's features: `spans[name]` lists their (group id, offset, n, block) spans), or None
    if unknown. Shared by the refit and statistics matching (tuneless.bn_match).

    A producer may feed several groups (a zero-padded shortcut splits a stream into the
    channels it carries and the ones it pads): `tuneless.reduce` rebuilds its rows span by
    span in offset order and copies the rows no group owns, so the map is block-diagonal
    in that order, with identity blocks for unchanged spans.
    """
    slots = sorted(spans.get(name, []), key=lambda s: s[1])
    n_out = layer.weight.shape[0]
    if not slots:
        return torch.eye(n_out)
    if any(block != 1 for *_, block in slots):
        return None
    blocks, pos = [], 0
    for gid, lo, n, _ in slots:
        if lo < pos:
            return None  # overlapping spans: not a layout reduce produces
        if lo > pos:
            blocks.append(torch.eye(lo - pos))
        m = maps.get(gid)
        blocks.append(torch.eye(n) if m is None else m)
        pos = lo + n
    tail = n_out - sum(b.shape[0] for b in blocks)  # rows after the last span, copied
    if tail < 0:
        return None
    return torch.block_diag(*blocks, *([torch.eye(tail)] if tail else []))


def _capture(model: nn.Module, name: str, x: torch.Tensor, what: str) -> torch.Tensor:
    return capture(model, model.get_submodule(name), lambda: model(x), what, name).detach()


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Design matrix: one row per sample (linear, rows × inputs), or for a conv its patches
    as unfold gives them (images × C_in·k × positions: one row per output position, kept
    in that layout; _normal_equations reads it without a transposed copy)."""
    if isinstance(layer, nn.Conv2d):
        cols = conv_patches(layer, x)  # the padding its own forward applies, if any
        if cols is None:
            raise TunelessError(f"cannot refit {type(layer).__name__}: its forward is not a "
                                "zero-padded conv2d on its own weight")
        return cols
    return x.reshape(-1, x.shape[-1])


# conv patches go image by image into batched products where an image has at least as
# many output positions as inputs per position (each k × k product then sums ≥ k terms; the
# large early maps, whose row-major copy costs most); others are copied row-major for one
# product, as wide as they are
_PRODUCT_BYTES = 64 << 20  # the batched products' partial sums: images × k × k floats


def _normal_equations(rows: torch.Tensor, tgt: torch.Tensor, intercept: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(XᵀX, XᵀY) in float64 for the design `rows` (_rows) and targets `tgt` (one row per
    design row), X with a ones column last when `intercept` — built from sums, not by
    concatenating the column; conv patches on maps with at least as many positions as
    inputs per position image by image in batched products, never copied row-major (that
    copy and the ones column's were a third of a ResNet-56 refit)."""
    if rows.dim() == 3 and rows.shape[2] >= rows.shape[1]:
        n_img, k, pos = rows.shape
        per_image = tgt.reshape(n_img, pos, tgt.shape[-1])
        step = max(1, _PRODUCT_BYTES // (4 * k * k))
        gram = cross = None
        for i in range(0, n_img, step):
            part = rows[i:i + step]
            g = torch.bmm(part, part.transpose(1, 2)).sum(0).double()
            c = torch.bmm(part, per_image[i:i + step]).sum(0).double()
            gram, cross = (g, c) if gram is None else (gram + g, cross + c)
        sums, count = rows.sum((0, 2)).double(), n_img * pos
    else:
        if rows.dim() == 3:  # small maps: one row per output position, row-major
            rows = rows.transpose(1, 2).reshape(-1, rows.shape[1])
        gram, cross = (rows.T @ rows).double(), (rows.T @ tgt).double()
        sums, count = rows.sum(0).double(), rows.shape[0]
    if not intercept:
        return gram, cross
    k = gram.shape[0]
    full = gram.new_empty(k + 1, k + 1)
    full[:k, :k], full[:k, k], full[k, :k], full[k, k] = gram, sums, sums, float(count)
    return full, torch.cat([cross, tgt.sum(0, keepdim=True).double()])


@dataclass
class _Target:
    """What a small layer is refitted to: the original's outputs through `map`; with a
    `clamp` (lo, hi) that follows the layer, a merged channel's target t has clamp(t) =
    the mean of its members' clamped outputs (t = that mean where it lies strictly inside
    (lo, hi), else the mean before the clamp, which is then on the same side)."""

    map: torch.Tensor
    clamp: tuple[float, float] | None = None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4:  # (b, c, h, w) → (b·h·w, c)
            t = t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])
        else:
            t = t.reshape(-1, t.shape[-1])
        m = self.map.T.to(t.dtype)
        if self.clamp is None:
            return t @ m
        lo, hi = self.clamp
        after = t.clamp(lo, hi) @ m
        return torch.where((after > lo) & (after < hi), after, t @ m)


_CLAMPS = ((0.0, 6.0), (0.0, math.inf))  # ReLU6, ReLU: the narrower first
_PROBE_IMAGES = 8
# rows per unknown below which a layer keeps the plain mean target (3, 10 and 30 measured
# alike on VGG11-BN; anything ≥ 3 recovers the MLP: docs/folding.md "Clamp-aware targets")
MIN_ROWS_PER_UNKNOWN = 10


def _merges(out_map: torch.Tensor) -> bool:
    """Whether some output channel averages several original ones (not a selection)."""
    return bool(((out_map != 0).sum(1) > 1).any())


def _consumers(graph) -> dict[str, list[str]]:
    """Per producer: the layers reading its groups (where a clamp after it must show)."""
    readers: dict[str, list[str]] = {}
    for g in graph.groups:
        names = list(dict.fromkeys(s.module for s in g.consumers))
        for s in g.producers:
            readers.setdefault(s.module, []).extend(names)
    return readers


@torch.no_grad()
def _clamp_after(model: nn.Module, site: str, readers: list[str],
                 x: torch.Tensor) -> tuple[float, float] | None:
    """The clamp every path from `site`'s output to its readers starts with, or None:
    clamping the output at (lo, hi) leaves every reader's input exactly as it was (tried
    only where the probe's outputs cross each finite bound, so the test can fail)."""
    if not readers:
        return None
    module = model.get_submodule(site)
    z = _capture(model, site, x, "output").clone()
    before = _reader_inputs(model, readers, x)
    for lo, hi in _CLAMPS:
        if (math.isfinite(lo) and not bool((z < lo).any())) or \
                (math.isfinite(hi) and not bool((z > hi).any())):
            continue
        handle = module.register_forward_hook(lambda _m, _a, out, lo=lo, hi=hi: out.clamp(lo, hi))
        try:
            after = _reader_inputs(model, readers, x)
        finally:
            handle.remove()
        if all(torch.equal(a, b) for a, b in zip(before, after)):
            return lo, hi
    return None


def _rows_enough(layer: nn.Module, rows: int) -> bool:
    """Whether `rows` least-squares rows (images × output positions) are MIN_ROWS_PER_UNKNOWN
    × the unknowns of each of the original `layer`'s outputs. The target after a clamp is
    not linear in the layer's input, so with about as many rows as unknowns (a fully
    connected layer on a thousand images) the fit follows the sample and not the function;
    the plain mean target, which the inputs reproduce exactly where they are the
    original's, is kept."""
    return rows >= MIN_ROWS_PER_UNKNOWN * (layer.weight[0].numel() + 1)


def _reader_inputs(model: nn.Module, readers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, a, n=n: seen.setdefault(n, a[0].detach().clone())) for n in readers]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return [seen.get(n, torch.empty(0)) for n in readers]


def _chunks(original: nn.Module, plan: list, rows: dict[str, int], images: int,
            budget: int) -> list[tuple[list, bool]]:
    """The plan cut into runs of consecutive layers whose targets for all images fit in
    `budget` bytes together: each run costs one pass of both models, so the refit stays
    linear in depth while memory stays bounded. A layer's targets are its `rows` per image
    (_forward_order) × the small model's channels of it (its target map's rows). A layer
    whose targets alone exceed the budget is a run of its own, marked as not fitting (both
    models then run once per batch for it alone)."""
    chunks: list[tuple[list, bool]] = []
    used = budget + 1
    for step in plan:
        name, _, target = step
        need = (rows[name] * target.map.shape[0] * images
                * original.get_submodule(name).weight.element_size())
        if not chunks or used + need > budget:
            chunks.append(([], need <= budget))
            used = 0
        chunks[-1][0].append(step)
        used += need
    return chunks


def _cached_targets(original: nn.Module, plan: list,
                    batches: list) -> dict[str, list[torch.Tensor]] | None:
    """Every planned layer's target from one forward pass of the original per batch (the
    original does not change, so its outputs need computing once); None where a layer ran
    more or less than once per forward."""
    cache: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in plan}
    hooks = []
    for name, norm, target in plan:
        def hook(_m, _a, out, name=name, target=target):
            cache[name].append(target(out.detach()))
        hooks.append(original.get_submodule(norm or name).register_forward_hook(hook))
    try:
        for xb in batches:
            original(xb)
    finally:
        for h in hooks:
            h.remove()
    if any(len(v) != len(batches) for v in cache.values()):
        return None  # a layer ran more or less than once per forward: capture one by one
    return cache


def _refit_in_one_pass(small: nn.Module, plan: list, batches: list, cache: dict,
                       ridge: float, ticker) -> None:
    """Refit every planned layer during a single forward pass of the small model over all
    images: a hook solves each layer just before it runs, so its input already reflects
    every earlier refit (the same problems as capturing layer by layer, in linear time)."""
    sizes = [len(b) for b in batches]

    def solve(module, args, name, norm):
        pairs = ((_rows(module, chunk), cache[name][i])
                 for i, chunk in enumerate(args[0].split(sizes)))
        _solve_layer(small, name, norm, pairs, ridge)
        del cache[name]  # free this layer's targets before the next one's rows are built
        ticker.update()

    hooks = [small.get_submodule(name).register_forward_pre_hook(
        lambda m, a, name=name, norm=norm: solve(m, a, name, norm)) for name, norm, _ in plan]
    try:
        small(torch.cat(batches))
    finally:
        for h in hooks:
            h.remove()


def _pairs(original, small, name, norm, target, batches) -> Iterator[tuple]:
    layer = small.get_submodule(name)
    for xb in batches:
        inp = _capture(small, name, xb, "input")
        tgt = _capture(original, norm or name, xb, "output")
        yield _rows(layer, inp), target(tgt)


def _solve_layer(small, name, norm, pairs, ridge) -> None:
    layer = small.get_submodule(name)
    intercept = norm is not None or layer.bias is not None
    xtx = xty = None
    for rows, tgt in pairs:
        a, b = _normal_equations(rows, tgt, intercept)
        xtx, xty = (a, b) if xtx is None else (xtx + a, xty + b)
    from tuneless.distributed import all_sum

    sol = ridge_solve(all_sum(xtx), all_sum(xty), ridge).to(layer.weight.dtype)  # all ranks
    weight, bias = (sol[:-1].T, sol[-1]) if intercept else (sol.T, None)
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    if norm is not None:
        bn = small.get_submodule(norm)
        if layer.bias is not None:
            layer.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)  # (x − 0)/√(1 − ε + ε) = x
        bn.weight.fill_(1)
        bn.bias.copy_(bias)
    elif bias is not None:
        layer.bias.copy_(bias)
