"""Build an untrained model from an architecture reference: the one place both loaders
(tuneless.modelio for user files, tuneless.serialize for tuneless's own) turn a file's
reference into code, under the trust rules of tuneless.trust."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from tuneless.errors import TunelessError, first_line


def build_arch(ref: str, kwargs: dict[str, Any] | None = None, *, trust_code: bool = False,
               where: str = "") -> nn.Module:
    """Build an untrained model from an architecture reference and attach `tuneless_arch`.

    ref: a zoo name ("resnet20" or "zoo:resnet20"), "torchvision:resnet18" (untrained unless
    kwargs name `weights`, e.g. "DEFAULT", which torchvision downloads) or "timm:NAME"
    (`pretrained=True` downloads from the hub), "transformers:image-classification" (kwargs
    {"config": a transformers config dict}; transformers' own classes only), a name given to
    tuneless.register_architecture, or an import path "pkg.module:Class". An import path
    resolves only to an nn.Module class of torch.nn / torchvision / timm / tuneless unless
    trust_code=True (see tuneless.trust):
    loaders pass the file's reference here, and a file must not choose what code runs.
    """
    from tuneless.trust import registered_architecture, resolve_import

    if not isinstance(ref, str) or not ref.strip():
        raise TunelessError(f"bad architecture reference {ref!r}{_in(where)}")
    if not isinstance(kwargs or {}, dict):
        raise TunelessError(f"architecture arguments{_in(where)} must be a dict")
    kwargs = dict(kwargs or {})
    ref = ref.strip()
    registered = registered_architecture(ref)
    if registered is not None:
        model = _call(registered, kwargs, ref)
    elif ref.startswith("torchvision:"):
        name = ref.split(":", 1)[1]
        try:
            import torchvision
        except ImportError as exc:
            raise TunelessError("torchvision is not installed (pip install torchvision)") from exc
        kwargs.setdefault("weights", None)
        try:
            model = torchvision.models.get_model(name, **kwargs)
        except (ValueError, TypeError, KeyError) as exc:
            raise TunelessError(f"cannot build {ref}: {first_line(exc, 200)}") from exc
        except (OSError, RuntimeError) as exc:  # a weights enum downloads: offline, hub down
            raise TunelessError(f"cannot fetch the {kwargs['weights']} weights of {ref} "
                                f"({first_line(exc, 200)}); without internet, load a weights "
                                "file with --arch instead") from exc
    elif ref.startswith("timm:"):
        try:
            import timm
        except ImportError as exc:
            raise TunelessError("timm is not installed (pip install timm)") from exc
        pretrained = bool(kwargs.pop("pretrained", False))
        try:
            model = timm.create_model(ref.split(":", 1)[1], pretrained=pretrained, **kwargs)
        except (OSError, ConnectionError) as exc:  # pretrained weights come from the hub
            raise TunelessError(f"cannot fetch the pretrained weights of {ref} "
                                f"({first_line(exc, 200)}); without internet, load a weights "
                                "file with --arch instead") from exc
        except (RuntimeError, ValueError, TypeError) as exc:
            raise TunelessError(f"cannot build {ref}: {first_line(exc, 200)}") from exc
    elif ref == "transformers:image-classification":  # config data, transformers' classes
        from tuneless.hf_vision import build_image_classifier

        return build_image_classifier(kwargs.get("config"))  # sets tuneless_arch itself
    elif ":" in ref and not ref.startswith("zoo:"):
        factory = resolve_import(ref, "architecture", trust_code, where)
        model = _call(factory, kwargs, ref)
    else:
        from tuneless.zoo import build_model

        name = ref.removeprefix("zoo:")
        model = build_model(name, **kwargs)
        ref = f"zoo:{name}"
    # the architecture, never its downloaded weights: a saved model carries its own tensors
    model.tuneless_arch = {"ref": ref, "kwargs": {k: v for k, v in kwargs.items()
                                                  if k not in ("weights", "pretrained")}}
    return model


def is_reference(spec: str) -> bool:
    """True for a model given by architecture name on the command line instead of a file:
    torchvision:NAME, timm:NAME or zoo:NAME."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in ("torchvision", "timm", "zoo") \
        and ":" in spec


def _in(where: str) -> str:
    return f" in {where}" if where else ""


def _call(factory, kwargs: dict, ref: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise TunelessError(f"bad arguments for {ref}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise TunelessError(f"{ref} did not return an nn.Module")
    return model
