"""Least-squares repair of a folded LLM: refit each layer's consumers (o_proj, down_proj).

Folding a language model has no BatchNorm to repair (METHODS.md §1.4), and on a small
model the folded layers' small errors compound through the residual stream. This repair
(ours, beyond the paper) walks the layers in order on calibration tokens, keeping two
residual streams: the original model's and the folded model's (already repaired below).
Where a layer was folded, its consumer projection W (o_proj for merged heads, down_proj
for merged MLP channels) is refit in closed form so that the folded stream lands back
on the original one:

    W' = argmin ||A W'ᵀ − Y||² + λ·mean(diag AᵀA)·||W' − W||²

A: the consumer's inputs in the folded model, Y: what the layer must add to the folded
stream to reach the original stream. The ridge term pulls towards the folded weights
(fold_llm's defaults, 16 sequences of 128 tokens and λ = 3, were chosen over 3 seeds:
docs/llm.md "Defaults"). Calibration tokens come either from text
(`repair="refit"`) or from the uncompressed model's own samples (`repair="self"`, no data:
the language-model analogue of Fold-DIR's synthetic images).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from tuneless.distributed import all_sum
from tuneless.errors import TunelessError
from tuneless.hooks import StopForward
from tuneless.linalg import ridge_solve
from tuneless.llm.adapters import adapter_for
from tuneless.modes import evaluating
from tuneless.progress import Ticker, progress


def layer_inputs(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """The hidden states entering decoder layer 0 and, per layer, the keyword arguments that
    layer gets (rotary position embeddings, attention mask), from one forward call.

    Per layer, not once: families that mix attention types (Gemma 2/3, Qwen2 with sliding
    windows) give each layer the mask and rotary table of its own type. The layers do not
    compute during this call (each passes its input through): masks and rotary tables are
    made before the layer loop, so the keyword arguments are the same, for the cost of the
    embeddings alone."""
    layers = adapter_for(model).layers(model)
    first: dict = {}
    per_layer: list[dict | None] = [None] * len(layers)

    def record(i: int):
        def hook(m, args, kwargs):
            hidden, kw = _named_inputs(m, args, kwargs)
            if i == 0:
                first["hidden"] = hidden
            per_layer[i] = kw
            if i == len(layers) - 1:
                raise StopForward  # nothing after the last layer's inputs is needed
        return hook

    def passthrough(*args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    own = [layer.__dict__.get("forward") for layer in layers]  # e.g. accelerate's wrapper
    for layer in layers:
        layer.forward = passthrough
    try:
        model(input_ids=ids, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
        for layer, fwd in zip(layers, own):
            if fwd is None:
                del layer.forward
            else:
                layer.forward = fwd
    if any(kw is None for kw in per_layer):
        raise TunelessError(f"not every decoder layer of {type(model).__name__} ran in its "
                            "forward pass")
    return first["hidden"], per_layer


def _named_inputs(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """(hidden states, every other input by name) of one call of a decoder layer: GPT-2
    passes its mask positionally, and the replays give all but the hidden states by name."""
    if len(args) <= 1:
        kw = dict(kwargs)
        return (args[0] if args else kw["hidden_states"]), {
            k: v for k, v in kw.items() if k != "hidden_states"}
    sig = inspect.signature(type(layer).forward)
    bound = sig.bind(layer, *args, **kwargs).arguments
    names = [n for n in sig.parameters if n != "self"]
    hidden = bound.pop(names[0])
    bound.pop("self", None)
    for name, p in sig.parameters.items():  # **kwargs arrive as one dict: spread them
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return hidden, dict(bound)


def _out(result) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _run(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, watch: dict[str, nn.Module]):
    """Run one decoder layer; also return the first positional input of each watched module
    (in the stream's shape: OPT flattens batch and sequence inside its layers)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        mod.register_forward_pre_hook(lambda _m, a, key=key: seen.__setitem__(key, a[0]))
        for key, mod in watch.items()
    ]
    try:
        out = _out(layer(hidden, **kwargs))
    finally:
        for h in handles:
            h.remove()
    return out, {k: v.reshape(*hidden.shape[:-1], v.shape[-1]) for k, v in seen.items()}


# the original's streams are kept for the refit up to this size (SmolLM2-135M on the default
# 16 × 128 tokens: 283 MB); beyond it the refit runs the original layers again
TAPE_BYTES = 1 << 30


class ReferenceTape:
    """The original model's streams through each decoder layer (its output and what the
    refit watches inside it), recorded while the activation statistics run the original on
    the refit's own tokens: the refit then runs only the folded layers, one forward pass of
    the original saved per fold. Recorded by hooks (`hooks`) during any full forward pass."""

    def __init__(self, adapter, layers, shape: tuple[int, int]) -> None:
        self.layers = list(layers)
        self.watch = [_reference_watch(adapter, layer) for layer in self.layers]
        self.shape = tuple(shape)  # (sequences, positions) of the tokens it records
        self.parts: list[dict[str, list[torch.Tensor]]] = [
            {key: [] for key in ("out", *w)} for w in self.watch]

    @classmethod
    def of(cls, model: nn.Module, ids: torch.Tensor) -> ReferenceTape:
        """A tape of every decoder layer of `model` on `ids`."""
        adapter = adapter_for(model)
        return cls(adapter, adapter.layers(model), tuple(ids.shape))

    @staticmethod
    def fits(model: nn.Module, ids: torch.Tensor, limit: int | None = None) -> bool:
        """Whether the tape of `model` on `ids` stays within `limit` bytes (TAPE_BYTES)."""
        adapter = adapter_for(model)
        layers = adapter.layers(model)
        p = next(model.parameters())
        width = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
        if not width:
            return False
        tensors = 1 + len(_reference_watch(adapter, layers[0]))
        size = ids.numel() * width * p.element_size() * tensors * len(layers)
        return size <= (TAPE_BYTES if limit is None else limit)

    def hooks(self) -> list:
        """Forward hooks that record the streams (copies: a later module of some family
        may write into its input in place); the caller removes them."""
        handles = []
        for layer, watch, parts in zip(self.layers, self.watch, self.parts):
            handles.append(layer.register_forward_hook(
                lambda _m, _a, out, box=parts["out"]: box.append(_out(out).detach().clone())))
            for key, mod in watch.items():
                handles.append(mod.register_forward_pre_hook(
                    lambda _m, a, box=parts[key]: box.append(a[0].detach().clone())))
        return handles

    def layer(self, i: int, shape: tuple[int, ...]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(layer i's output, its watched inputs) in the stream's (batch, seq, width) shape,
        for tokens of `shape` (those recorded); the record is then dropped."""
        if tuple(shape) != self.shape or not self.parts[i].get("out"):
            raise TunelessError("the reference tape was recorded on other tokens")
        seq = self.shape[1]
        parts = {k: torch.cat([v.reshape(-1, seq, v.shape[-1]) for v in vs])
                 for k, vs in self.parts[i].items()}
        self.parts[i] = {}
        return parts.pop("out"), parts


def _reference_watch(adapter, layer: nn.Module) -> dict[str, nn.Module]:
    """The modules inside an original layer whose inputs refit_layer reads: the post-attention
    norm ("mid") and, for sandwich norms, the consumers' output norms ("o", "down"); none in
    a parallel layer (no output norms in the parallel families)."""
    if adapter.is_parallel(layer):
        return {}
    watch = {"mid": getattr(layer, adapter.norms[1])}
    sandwich = adapter.post_norms
    if sandwich and not all(isinstance(getattr(layer, n), nn.Identity) for n in sandwich):
        watch.update({"o": getattr(layer, sandwich[0]), "down": getattr(layer, sandwich[1])})
    return watch


def ridge_refit(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_W' Σ_t ω_t ||W' a_t − y_t||² + λ·mean(diag aᵀΩa)·||W' − w||² in float64
    (a: N×k, y: N×d; weight ω per row, all ones by default)."""
    a64, y64 = a.reshape(-1, a.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
    if weight is not None:
        root = weight.reshape(-1, 1).double().sqrt()
        a64, y64 = a64 * root, y64 * root
    gram, cross = all_sum(a64.T @ a64), all_sum(a64.T @ y64)  # every rank's tokens
    return ridge_solve(gram, cross, lam, prior=w.T).T.to(w.dtype)


REFIT_SCOPES = ("folded", "downstream")
# "stream": each token's squared error divided by the energy of the residual stream it lands
# on (the next RMS norm divides by that), and for a sandwich norm also by the energy of the
# consumer's output it normalises; "none": every token alike.
REFIT_WEIGHTINGS = ("stream", "none")
# "stream": land on the original residual stream (also undoing the drift of earlier layers);
# "local": reproduce only this layer's own original contribution from the folded inputs;
# "auto": "local" for families with sandwich norms (Gemma 2/3: a sublayer's output is
# renormalised per token before it is added, so it cannot carry a correction of the stream's
# drift), "stream" otherwise. Measured: docs/llm.md "Defaults". A number α in [0, 2] aims
# between the two: the local contribution plus α times the drift ("local" = 0, "stream" = 1).
REFIT_TARGETS = ("auto", "stream", "local")
_DRIFT_SHARE = {"stream": 1.0, "local": 0.0}


def _token_weight(stream: torch.Tensor, normalised: torch.Tensor | None) -> torch.Tensor:
    w = 1.0 / stream.float().pow(2).mean(-1).clamp(min=1e-12)
    if normalised is not None:
        w = w / normalised.float().pow(2).mean(-1).clamp(min=1e-12)
    return w


def _through_norm(norm: nn.Module, contribution: torch.Tensor,
                  reference: torch.Tensor) -> torch.Tensor:
    """The input y with norm(y) ≈ contribution, for an RMS norm with gain g: y = c / g,
    scaled per token to the RMS of what the original consumer wrote (`reference`, with the
    norm's epsilon inside the root as the norm has it); exact when the contribution is the
    original's, and linear in c, so least squares applies."""
    probe = torch.ones(1, contribution.shape[-1], dtype=contribution.dtype,
                       device=contribution.device)
    eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 0.0) or 0.0)
    gain = norm(probe)[0] * (1.0 + eps) ** 0.5  # the gain itself: ones have mean square 1
    gain = torch.where(gain.abs() > 1e-6, gain, torch.full_like(gain, 1e-6))
    scale = (reference.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return contribution / gain * scale.to(contribution.dtype)


@torch.no_grad()
def refit_consumers(original: nn.Module, folded: nn.Module, ids: torch.Tensor, *,
                    lam: float = 1.0, scope: str = "folded", weighting: str = "none",
                    target: str | float = "auto", skip: int = 0,
                    show_progress: bool = False,
                    reference: ReferenceTape | None = None) -> nn.Module:
    """Refit o_proj / down_proj of `folded` in place (see module doc).

    ids: calibration token ids, (batch, seq_len). scope: "folded" refits the consumers whose
    inputs were merged; "downstream" also every o_proj/down_proj after the first folded
    layer, so unfolded layers help pull the stream back. target: what a refit consumer aims
    at (REFIT_TARGETS). weighting: per-token weights (REFIT_WEIGHTINGS). skip: positions at
    the start of each sequence left out of the least squares. reference: the original's
    streams on `ids`, already recorded (ReferenceTape). Returns `folded`.
    """
    check_refit_options(scope, target, weighting, lam)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise TunelessError(f"calibration ids must be (batch, seq_len ≥ 2), got {tuple(ids.shape)}")
    adapter = adapter_for(original)
    old_layers, new_layers = adapter.layers(original), adapter.layers(folded)
    if len(old_layers) != len(new_layers):
        raise TunelessError("the folded model has a different number of layers than the original")
    with evaluating(original), evaluating(folded):
        h_old, layer_kwargs = layer_inputs(original, ids)
        h_new = h_old.clone()
        seen_fold = False
        for i in progress(range(len(old_layers)), total=len(old_layers), desc="refit",
                          unit="layer", disable=not show_progress):
            seen_fold = seen_fold or is_folded(adapter, old_layers[i], new_layers[i])
            h_old, h_new = refit_layer(
                adapter, old_layers[i], new_layers[i], h_old, h_new, layer_kwargs[i],
                lam=lam, refit_unfolded=scope == "downstream" and seen_fold,
                weighting=weighting, target=target, skip=skip,
                reference=None if reference is None else reference.layer(i, ids.shape))
    return folded


def check_refit_options(scope: str, target: str | float, weighting: str, lam: float) -> None:
    """One-line errors for refit options (before any work)."""
    if scope not in REFIT_SCOPES:
        raise TunelessError(f"refit scope {scope!r}; choose one of {', '.join(REFIT_SCOPES)}")
    numeric = isinstance(target, int | float) and not isinstance(target, bool)
    if not (target in REFIT_TARGETS if isinstance(target, str) else numeric and 0 <= target <= 2):
        raise TunelessError(f"refit target {target!r}; choose one of {', '.join(REFIT_TARGETS)} "
                            "or a drift share between 0 and 2")
    if weighting not in REFIT_WEIGHTINGS:
        raise TunelessError(f"refit weighting {weighting!r}; choose one of "
                            f"{', '.join(REFIT_WEIGHTINGS)}")
    if lam < 0:
        raise TunelessError(f"refit lambda must be ≥ 0, got {lam}")


@torch.no_grad()
def refit_layer(adapter, lo: nn.Module, ln: nn.Module, h_old: torch.Tensor,
                h_new: torch.Tensor, kwargs: dict, *, lam: float, refit_unfolded: bool = False,
                weighting: str = "none", target: str | float = "auto", skip: int = 0,
                reference: tuple[torch.Tensor, dict] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit one decoder layer's consumers in place: `lo` the original layer, `ln` its folded
    version, h_old / h_new the original and folded streams entering it; refit_unfolded also
    refits consumers whose width did not change; reference: `lo`'s output and watched inputs
    on h_old, already recorded (ReferenceTape.layer), so `lo` need not run. Returns both
    streams after the layer. The in-memory and the streamed fold both walk the layers with
    this."""
    watch = _reference_watch(adapter, lo)
    # output norms, unless switched off (HyperCLOVA X's use_post_norm) or a parallel layer
    post, sandwich = adapter.norms[1], adapter.post_norms if "o" in watch else None
    if target == "auto":
        target = "local" if sandwich else "stream"
    alpha = _DRIFT_SHARE[target] if isinstance(target, str) else float(target)
    if adapter.is_parallel(lo):
        return _refit_parallel(adapter, lo, ln, h_old, h_new, kwargs, lam=lam,
                               refit_unfolded=refit_unfolded, weighting=weighting, alpha=alpha,
                               skip=skip, old_out=None if reference is None else reference[0])
    scale = adapter.residual_scale(lo)  # Granite adds residual_multiplier × each sublayer
    po, pn = adapter.projections(lo), adapter.projections(ln)
    h_old_out, seen_old = _run(lo, h_old, kwargs, watch) if reference is None else reference
    h_next = None  # the folded layer's output, when the last refit already gives it
    for short in ("o", "down"):
        same = pn[short].in_features == po[short].in_features
        if same and not refit_unfolded:
            continue
        _, seen = _run(ln, h_new, kwargs, {"mid": getattr(ln, post), "x": pn[short]})
        if short == "o":  # the attention half must land on the original mid-layer stream
            stream = seen_old["mid"]
            goal = stream - _between(h_old, h_new, alpha)
        else:  # the MLP half must land on the original layer output
            stream = h_old_out
            goal = stream - _between(seen_old["mid"], seen["mid"], alpha)
        if scale != 1.0:  # what the consumer (or its output norm) itself must write
            goal = goal / scale
        if sandwich:  # aim at the norm's input: c / gain at the original's scale
            norm = getattr(ln, sandwich[0] if short == "o" else sandwich[1])
            goal = _through_norm(norm, goal, seen_old[short])
        weight = (_token_weight(stream, seen_old[short] if sandwich else None)
                  if weighting == "stream" else None)
        _refit_into(pn[short], seen["x"], goal, weight, lam, skip)
        # after the down refit the output is mid + down(x): no second pass of the layer
        if short == "down":
            out = pn["down"](seen["x"])
            h_next = seen["mid"] + scale * (getattr(ln, sandwich[1])(out) if sandwich else out)
        else:
            h_next = None
    h_new = h_next if h_next is not None else _out(ln(h_new, **kwargs))
    return h_old_out, h_new


def _refit_parallel(adapter, lo: nn.Module, ln: nn.Module, h_old: torch.Tensor,
                    h_new: torch.Tensor, kwargs: dict, *, lam: float, refit_unfolded: bool,
                    weighting: str, alpha: float, skip: int = 0,
                    old_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """refit_layer for a layer whose attention and MLP both read its input and add to the
    stream (out = h + o(·) + down(·)): each consumer aims at the original output minus
    everything else the folded layer adds (the other consumer already refit); with α < 1
    the "everything else" moves towards the original layer's."""
    po, pn = adapter.projections(lo), adapter.projections(ln)
    h_old_out = _run(lo, h_old, kwargs, {})[0] if old_out is None else old_out
    h_next = None
    for short in ("o", "down"):
        if pn[short].in_features == po[short].in_features and not refit_unfolded:
            continue
        out, seen = _run(ln, h_new, kwargs, {"x": pn[short]})
        rest = out - pn[short](seen["x"])  # what the rest of the folded layer writes
        if alpha != 1:
            _, seen_old = _run(lo, h_old, kwargs, {"x": po[short]})
            rest = _between(h_old_out - po[short](seen_old["x"]), rest, alpha)
        weight = _token_weight(h_old_out, None) if weighting == "stream" else None
        _refit_into(pn[short], seen["x"], h_old_out - rest, weight, lam, skip)
        h_next = rest + pn[short](seen["x"]) if alpha == 1 else None
    h_new = h_next if h_next is not None else _out(ln(h_new, **kwargs))
    return h_old_out, h_new


def _refit_into(lin: nn.Linear, x: torch.Tensor, goal: torch.Tensor,
                weight: torch.Tensor | None, lam: float, skip: int) -> None:
    """Refit `lin`'s weight in place so that lin(x) ≈ goal (its bias stays; the weights fit
    the rest), on the positions from `skip` of each sequence on."""
    if lin.bias is not None:
        goal = goal - lin.bias
    if skip:
        x, goal = x[:, skip:], goal[:, skip:]
        weight = None if weight is None else weight[:, skip:]
    lin.weight.copy_(ridge_refit(x, goal, lin.weight, lam, weight))


def _between(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    """old + α·(new − old), exactly `old` or `new` at α = 0 or 1."""
    return old if alpha == 0 else new if alpha == 1 else old + alpha * (new - old)


def is_folded(adapter, lo: nn.Module, ln: nn.Module) -> bool:
    """Whether a consumer (o_proj / down_proj) of the layer lost input channels."""
    po, pn = adapter.projections(lo), adapter.projections(ln)
    return any(pn[s].in_features != po[s].in_features for s in ("o", "down"))


class _Tick:
    """A logits processor that changes nothing and advances a progress display per step."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker

    def __call__(self, _input_ids, scores):
        self.ticker.update()
        return scores


@torch.no_grad()
def _special_ids(model: nn.Module, tokenizer) -> tuple[int | None, int | None]:
    """(BOS, EOS) token ids: the tokenizer's, else the generation config's, else the config's."""
    if tokenizer is not None:
        return tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for attr in ("bos_token_id", "eos_token_id"):
        value = None
        for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            if value is not None:
                break
        out.append(value)
    return out[0], out[1]


def self_generated(model: nn.Module, tokenizer=None, n_samples: int = 64, seq_len: int = 256,
                   seed: int = 0, show_progress: bool = False, *, blocks: int = 1,
                   which: range | None = None, first_row: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) token ids sampled from the model itself (temperature 1, no top-k),
    starting from its beginning-of-sequence token: calibration text without any data.

    The BOS/EOS ids come from the tokenizer when given, else from the model's generation
    config or config, so the model alone is enough. Each row draws from a generator of its
    own, seeded by (seed, row number counted from `first_row`), so a row is the same however
    many rows are sampled beside it: the first n of n + m rows are the n rows sampled alone
    (the default fold's held-out rows: tuneless.llm.choose), and ranks can share the
    sampling. The rows are sampled in `blocks` contiguous batches (`which`: the blocks to
    sample, all by default); blocks change the cost, not the rows. One block is one batch,
    the fastest on one process."""
    if not 1 <= blocks <= n_samples:
        raise TunelessError(f"calib_blocks={blocks} must be between 1 and the number of "
                            f"sequences ({n_samples})")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 1:
        seq_len = min(seq_len, limit)  # never sample past the positions the model knows
    which = range(blocks) if which is None else which
    bounds = [n_samples * b // blocks for b in range(blocks + 1)]
    ticker = Ticker((seq_len - 1) * len(which), desc="sampling calibration text",
                    unit="token", disable=not show_progress)
    out = [_sample_rows(model, tokenizer, range(first_row + bounds[b], first_row + bounds[b + 1]),
                        seq_len, seed, ticker) for b in which]
    ticker.close()
    return torch.cat(out, 0)


_ROW_SEED_STRIDE = 1_000_003  # row r of seed s draws from a generator seeded s + stride * r


def _sample_rows(model, tokenizer, rows: range, seq_len: int, seed: int, ticker
                 ) -> torch.Tensor:
    """The sequences of `rows` (seq_len tokens each) sampled in one batch, each row from
    its own generator (`_RowSampler`); the global RNG (which generate's own draw reads, on
    the CPU and on the model's CUDA device) is restored afterwards."""
    bos, eos = _special_ids(model, tokenizer)
    start = bos if bos is not None else eos
    gens = [torch.Generator().manual_seed(seed + _ROW_SEED_STRIDE * r) for r in rows]
    device = model.get_input_embeddings().weight.device
    if start is None:  # no special token named anywhere: start each sample at a random one
        vocab = int(model.get_input_embeddings().num_embeddings)
        prompt = torch.cat([torch.randint(0, vocab, (1, 1), generator=g) for g in gens])
        start = 0
    else:
        prompt = torch.full((len(rows), 1), start, dtype=torch.long)
    pad = eos if eos is not None else start
    prompt = prompt.to(device)
    # generate's own draw reads the global generator of the model's device: left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
            max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1, top_k=0, top_p=1.0,
            temperature=1.0, pad_token_id=pad,
            logits_processor=[_Tick(ticker), _RowSampler(gens)])
    return out[:, :seq_len].cpu()


class _RowSampler:
    """A logits processor that draws each row's next token from that row's own generator
    (softmax of the scores it is given, which the length processors have already masked)
    and leaves only that token possible, so generate's own draw takes it: rows independent
    of the batch they are sampled in."""

    def __init__(self, gens: list[torch.Generator]) -> None:
        self.gens = gens

    def __call__(self, _input_ids, scores):
        cdf = torch.softmax(scores.detach().double().cpu(), dim=-1).cumsum(-1)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.gens])
        u = u * cdf[:, -1]
        # the first token whose cumulative probability passes u: never a zero-probability one
        picks = torch.searchsorted(cdf, u.unsqueeze(1), right=True).clamp_(max=cdf.shape[1] - 1)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, picks.to(scores.device), 0.0)
