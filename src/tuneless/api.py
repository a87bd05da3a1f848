"""One verb for every method: `tuneless.compress(model, config)`.

A config dataclass per method says everything that decides the result; a handler registry
maps each config type to the function that carries it out, on CNNs (traced channel groups)
and on Hugging Face decoder LMs (family adapters) alike. `tuneless.fold`, `prune` and `svd`
stay as the same calls with keyword arguments. The result records its config in
`small.tuneless_report["config"]` (JSON-able), so any result can be reproduced.

    small = tuneless.compress(model, tuneless.FoldConfig(sparsity=0.5, repair="ar"))
    small = tuneless.compress(llm, tuneless.PruneConfig(sparsity=0.2, criterion="magnitude"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from tuneless.errors import TunelessError


@dataclass
class MethodConfig:
    """What every method takes: a budget, and further options by name (see each method)."""

    sparsity: float | None = None
    channel_ratio: float | None = None
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": type(self).__name__, **asdict(self)}


@dataclass
class FoldConfig(MethodConfig):
    """Model folding (tuneless.fold); repair None = the default of the model kind."""

    repair: str | None = None


@dataclass
class PruneConfig(MethodConfig):
    """Structured pruning (tuneless.prune): l1 / l2 / random on CNNs, l2 (magnitude) /
    wanda-sp on language models."""

    criterion: str = "l1"


@dataclass
class SVDConfig(MethodConfig):
    """Truncated-SVD factorisation (tuneless.svd)."""


@dataclass
class IFMConfig(MethodConfig):
    """Greedy pairwise merging (tuneless.methods.ifm)."""


Handler = Callable[..., nn.Module]
HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: `handler(model, config, example_inputs, data)` carries out `config_type`."""
    def wrap(handler: Handler) -> Handler:
        HANDLERS[config_type] = handler
        return handler
    return wrap


def compress(model: nn.Module, config: MethodConfig, *, example_inputs=None,
             data=None) -> nn.Module:
    """A new, smaller model as `config` says; the input is untouched."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise TunelessError(f"no handler for {type(config).__name__}; known configs: "
                            + ", ".join(t.__name__ for t in HANDLERS))
    small = handler(model, config, example_inputs, data)
    report = getattr(small, "tuneless_report", None)
    if not isinstance(report, dict):
        report = {}
        small.tuneless_report = report
    report["config"] = config.to_dict()
    return small


def _budget(config: MethodConfig) -> dict:
    return {k: v for k, v in (("sparsity", config.sparsity),
                              ("channel_ratio", config.channel_ratio)) if v is not None}


@register_handler(FoldConfig)
def _fold(model, config: FoldConfig, example_inputs, data):
    from tuneless.methods.fold import fold

    return fold(model, repair=config.repair, example_inputs=example_inputs, data=data,
                **_budget(config), **config.options)


@register_handler(PruneConfig)
def _prune(model, config: PruneConfig, example_inputs, data):
    from tuneless.methods.prune import prune

    extra = {} if data is None else {"data": data}
    return prune(model, criterion=config.criterion, example_inputs=example_inputs,
                 **_budget(config), **extra, **config.options)


@register_handler(SVDConfig)
def _svd(model, config: SVDConfig, example_inputs, data):
    from tuneless.methods.svd import svd

    if config.channel_ratio is not None:
        raise TunelessError("SVDConfig takes sparsity= (or options energy= / rank_ratio=)")
    extra = {} if config.sparsity is None else {"sparsity": config.sparsity}
    if data is not None:  # whiten="data" reads it; the data-free variants ignore it
        extra["data"] = data
    return svd(model, example_inputs=example_inputs, **extra, **config.options)


@register_handler(IFMConfig)
def _ifm(model, config: IFMConfig, example_inputs, data):
    from tuneless.methods.ifm import ifm

    return ifm(model, example_inputs=example_inputs, **_budget(config), **config.options)
