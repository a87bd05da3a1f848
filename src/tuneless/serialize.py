"""Save and load compressed models: architecture reference + changed modules + weights.

A compressed model's Python class usually builds the *original* sizes, so its state_dict
alone cannot be loaded. `save` stores
  - the architecture reference `model.tuneless_arch` ({"ref", "kwargs"}, set by
    tuneless.modelio and kept by every method's deepcopy),
  - a spec (type + constructor arguments, or a container of specs) for every submodule
    that differs from a freshly built original (resized convs, a conv replaced by an
    nn.Sequential of two convs, ...),
  - the state_dict and its sha256.
`load` rebuilds the original, swaps in the recorded modules and loads the weights with
torch.load(weights_only=True): no pickled code runs. A model without a reference (a user's
own class built in Python) is stored by structure instead: every module's type, tensor
shapes and, for torch.nn modules, a spec; `load(path, model=MyNet(...))` reshapes a freshly
built original to it (Torch-Pruning's load_state_dict does the same). A changed module
tuneless cannot describe on a model *with* a reference is pickled whole; loading that
file needs allow_pickle=True. Format: docs/serialization.md.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import warnings
from typing import Any

import torch
import torch.nn as nn

from tuneless.arch import _in, build_arch
from tuneless.errors import TunelessError

FORMAT = "tuneless-model/1"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_PRIMITIVE = (int, float, str, bool, type(None))


class _NoSpec(Exception):
    pass


def save(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> dict[str, Any]:
    """Write `model` atomically to `path`; returns {"mode": "reference"|"structure"|"pickle",
    ...}."""
    from tuneless.checkpoint import weights_sha256
    from tuneless.io_atomic import atomic_torch_save

    if not isinstance(model, nn.Module):
        raise TunelessError(f"save expects an nn.Module, got {type(model).__name__}")
    arch = architecture_of(model)
    common = {"format": FORMAT, "meta": _plain(meta or {}),
              "report": _plain(getattr(model, "tuneless_report", None)),
              "torch_version": str(torch.__version__)}
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    weights = {"state_dict": sd, "weights_sha256": weights_sha256(sd)}
    tree = describe(model) if arch is None else {}
    if arch is None and "spec" not in tree and getattr(model, "tuneless_pickled", False):
        why = "it was read from a pickled module (allow_pickle) and has no architecture reference"
    elif arch is None:  # rebuilt from the file alone when every module is torch.nn's
        original = getattr(model, "tuneless_original", None)
        atomic_torch_save({**common, "mode": "structure", "structure": tree, **weights,
                           "original_shapes": _plain(original)}, path)
        return {"mode": "structure", "type": tree.get("type") or tree["spec"]["type"]}
    else:
        try:
            specs = changed_modules(model, arch)
        except _NoSpec as exc:
            why = f"module '{exc}' cannot be described by type and constructor arguments"
        else:
            atomic_torch_save({**common, "mode": "reference", "arch": arch, "modules": specs,
                               **weights}, path)
            return {"mode": "reference", "changed_modules": sorted(specs)}
    note = (f"stored as a whole pickled module because {why}; loading it needs "
            "tuneless.load(path, allow_pickle=True) (only for files you trust)")
    warnings.warn(note, stacklevel=2)
    try:
        atomic_torch_save({**common, "mode": "pickle", "note": note, "module": model}, path)
    except (AttributeError, TypeError, pickle.PicklingError) as exc:  # lambdas, local classes
        raise TunelessError(f"cannot save this model: {why}, and pickling it failed "
                            f"({str(exc).splitlines()[0]})") from exc
    return {"mode": "pickle", "note": note}


def load(path: str | os.PathLike, allow_pickle: bool = False,
         trust_code: bool = False, model: nn.Module | None = None) -> nn.Module:
    """Load a file written by `save` (eval mode); one-line TunelessError on bad files.

    Architecture and module types named in the file resolve against an allowlist
    (tuneless.trust); trust_code=True lets it import any path it names, allow_pickle=True
    unpickles whole modules. Both run code from the file: only for files you trust.
    model: a freshly built original, for files saved from a model without an architecture
    reference (mode "structure"); it is reshaped in place and returned.
    """
    from tuneless.checkpoint import read_torch_file

    try:
        obj = read_torch_file(path, what="model file")
    except TunelessError as exc:
        if "unsafe path" not in str(exc):
            raise
        if not allow_pickle:
            raise TunelessError(
                f"{path} stores a whole pickled module (no architecture reference); load it "
                "with tuneless.load(path, allow_pickle=True) / --unsafe-pickle only if you "
                "trust it") from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise TunelessError(f"{path} is not a model saved by tuneless.save (no '{FORMAT}' tag)")
    return model_from_saved(obj, str(path), allow_pickle=allow_pickle, trust_code=trust_code,
                            model=model)


def model_from_saved(obj: dict, where: str, allow_pickle: bool = False,
                     trust_code: bool = False, model: nn.Module | None = None) -> nn.Module:
    from tuneless.checkpoint import weights_sha256

    if obj.get("mode") == "structure":
        return _from_structure(obj, where, model, trust_code)
    if obj.get("mode") == "pickle":
        if not allow_pickle or not isinstance(obj.get("module"), nn.Module):
            raise TunelessError(f"{where} stores a pickled module; pass allow_pickle=True")
        return obj["module"].eval()
    try:
        arch, specs, sd = obj["arch"], obj["modules"], obj["state_dict"]
    except KeyError as exc:
        raise TunelessError(f"corrupt model file {where}: missing {exc}") from None
    if not (isinstance(arch, dict) and isinstance(specs, dict) and isinstance(sd, dict)):
        raise TunelessError(f"corrupt model file {where}: arch, modules or state_dict malformed")
    if weights_sha256(sd) != obj.get("weights_sha256"):
        raise TunelessError(f"corrupt model file {where}: weights do not match their sha256")
    model = build_arch(arch.get("ref"), arch.get("kwargs", {}), trust_code=trust_code,
                       where=where)
    model = _swap_in(model, specs, sd, trust_code=trust_code, where=where)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise TunelessError(f"{where} does not fit {arch['ref']}: "
                            f"{str(exc).splitlines()[0]}") from exc
    model.tuneless_arch = dict(arch)
    return _restored(model, obj, sd)


def _restored(model: nn.Module, obj: dict, sd: dict) -> nn.Module:
    """A loaded model given back what the file recorded beside its weights: the saved dtypes,
    the meta it was saved with (`tuneless_saved_meta`: a dataset or input shape there spares
    --dataset / --input-shape later) and the compression report; in eval mode."""
    _saved_dtypes(model, sd)
    meta = obj.get("meta")
    if isinstance(meta, dict) and meta:
        model.tuneless_saved_meta = meta
    if obj.get("report") is not None:
        model.tuneless_report = obj["report"]
    return model.eval()


def _saved_dtypes(model: nn.Module, sd: dict) -> None:
    """Give every parameter and buffer the dtype it was saved in: load_state_dict casts to
    the freshly built module's (float32), so a float16 or bfloat16 model would come back
    float32. In place (`.data`), so tied parameters stay one object."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for key, saved in sd.items():
            t = tensors.get(key)
            if (isinstance(saved, torch.Tensor) and t is not None
                    and t.dtype != saved.dtype and saved.is_floating_point()):
                t.data = t.data.to(saved.dtype)


def describe(m: nn.Module, where: str = "") -> dict:
    """A module tree as the file stores it for models without a reference: {"spec": ...} for
    a torch.nn module (or container of them) that module_spec can rebuild, else the type, its
    extra_repr, its own tensors' shapes and its children, described the same way."""
    tname = f"{type(m).__module__}:{type(m).__qualname__}"
    if tname.startswith("torch.nn."):
        try:
            return {"spec": module_spec(m, where)}
        except _NoSpec:
            pass
    return {"type": tname, "repr": m.extra_repr(),
            "tensors": {k: None if v is None else list(v.shape)
                        for k, v in [*m._parameters.items(), *m._buffers.items()]},
            "children": {k: describe(c, f"{where}.{k}" if where else k)
                         for k, c in m.named_children()}}


def _from_structure(obj: dict, where: str, model: nn.Module | None,
                    trust_code: bool) -> nn.Module:
    from tuneless.checkpoint import weights_sha256

    tree, sd = obj.get("structure"), obj.get("state_dict")
    if not (isinstance(tree, dict) and isinstance(sd, dict)):
        raise TunelessError(f"corrupt model file {where}: structure or state_dict malformed")
    if weights_sha256(sd) != obj.get("weights_sha256"):
        raise TunelessError(f"corrupt model file {where}: weights do not match their sha256")
    name = tree.get("type") or tree.get("spec", {}).get("type", "?")
    given = model is not None
    if model is None and "spec" in tree:  # torch.nn modules all the way: built from the file
        model = build_module(tree["spec"], trust_code, where)
    if not isinstance(model, nn.Module):
        raise TunelessError(
            f"{where} holds a compressed {name.rpartition(':')[2]} saved without an "
            "architecture reference: build the original model and pass it, "
            "tuneless.load(path, model=MyNet(...)) (--arch pkg.module:Class on the command line)")
    if given:
        _check_original(model, obj.get("original_shapes"), where)
    model = _reshape(model, tree, "", sd, trust_code, where)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise TunelessError(f"{where} does not fit the model given: "
                            f"{str(exc).splitlines()[0]}") from exc
    return _restored(model, obj, sd)


def _check_original(model: nn.Module, shapes, where: str) -> None:
    """The model given must be the one the file was compressed from (same tensor names and
    shapes), where the file recorded it: otherwise specs would silently rebuild a different
    network's layers to the file's sizes."""
    if not isinstance(shapes, dict):
        return
    have = {k: list(v.shape) for k, v in model.state_dict().items()}
    for k in sorted(set(have) | set(shapes)):
        if have.get(k) != shapes.get(k):
            raise TunelessError(
                f"the model given is not the one {where} was compressed from: {k} is "
                f"{have.get(k, 'missing')} there, {shapes.get(k, 'missing')} in the original")


def _reshape(m: nn.Module, node: dict, name: str, sd: dict, trust_code: bool,
             where: str) -> nn.Module:
    """m made to match `node` (describe's output): rebuilt where a spec differs, own tensors
    resized, children likewise; the module to put in m's place."""
    at = name or "the model"
    if "spec" in node:
        try:
            same = _plain(module_spec(m, name)) == _plain(node["spec"])
        except _NoSpec:
            same = False
        return m if same else build_module(node["spec"], trust_code, where)
    tname = f"{type(m).__module__}:{type(m).__qualname__}"
    if tname != node.get("type"):
        raise TunelessError(f"the model given does not fit {where}: {at} is {tname}, the "
                            f"file's is {node.get('type')}")
    if m.extra_repr() != node.get("repr", m.extra_repr()):
        raise TunelessError(f"the model given does not fit {where}: {at} ({tname}) has "
                            f"settings '{m.extra_repr()}', the file's '{node.get('repr')}'")
    own = {**m._parameters, **m._buffers}
    tensors, children = node.get("tensors", {}), node.get("children", {})
    mine, theirs = {*own, *dict(m.named_children())}, {*tensors, *children}
    if mine != theirs:
        diff = ", ".join([*(f"+{k}" for k in sorted(mine - theirs)),
                          *(f"-{k}" for k in sorted(theirs - mine))])
        raise TunelessError(f"the model given does not fit {where}: {at} ({tname}) has other "
                            f"tensors or submodules than the file's ({diff})")
    resize = [k for k, shape in tensors.items()
              if shape is not None and own[k] is not None and list(own[k].shape) != shape]
    if resize:
        _resize(m, name, resize, sd)
    for k, child in list(m.named_children()):
        new = _reshape(child, children[k], f"{name}.{k}" if name else k, sd, trust_code, where)
        if new is not child:
            setattr(m, k, new)
    return m


def architecture_of(model: nn.Module) -> dict | None:
    """The {"ref", "kwargs"} that rebuilds the original model, if known."""
    arch = getattr(model, "tuneless_arch", None)
    if isinstance(arch, dict) and "ref" in arch:
        return {"ref": str(arch["ref"]), "kwargs": _plain(arch.get("kwargs", {}))}
    meta = getattr(model, "tuneless_meta", None)  # tuneless training checkpoints
    if isinstance(meta, dict) and meta.get("arch"):
        return {"ref": f"zoo:{meta['arch']}", "kwargs": _plain(meta.get("arch_kwargs", {}))}
    return None


def changed_modules(model: nn.Module, arch: dict) -> dict[str, dict]:
    """Specs of the submodules of `model` that differ from a freshly built original."""

    fresh = build_arch(arch["ref"], arch.get("kwargs", {}), trust_code=True)
    specs: dict[str, dict] = {}
    _diff(fresh, model, "", specs)
    rebuilt = _swap_in(fresh, specs, model.state_dict(), trust_code=True)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:
        bad = next(iter(sorted(set(want.items()) ^ set(got.items()))))[0]
        raise _NoSpec(bad.rpartition(".")[0])
    return specs


def _diff(fresh: nn.Module, model: nn.Module, prefix: str, out: dict) -> None:
    fc, mc = dict(fresh.named_children()), dict(model.named_children())
    same_kind = type(fresh) is type(model) and fc.keys() == mc.keys()
    sig_f, sig_m = _signature(fresh), _signature(model)
    if same_kind and sig_f[0] == sig_m[0] and sig_f[1] != sig_m[1] and type(model) not in (
            nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
        # a custom module whose own tensors changed size (a layer scale, a position
        # embedding): keep the module, resize those tensors before loading the weights
        out[prefix] = {"resize": [k for k, shp in sig_m[1] if (k, shp) not in sig_f[1]]}
    elif not (same_kind and sig_f == sig_m):
        out[prefix] = module_spec(model, prefix)
        return
    for name, child in mc.items():
        _diff(fc[name], child, f"{prefix}.{name}" if prefix else name, out)


def _signature(m: nn.Module):
    own = [(k, None if v is None else tuple(v.shape))
           for k, v in [*m._parameters.items(), *m._buffers.items()]]
    return m.extra_repr(), own


def module_spec(m: nn.Module, where: str = "") -> dict:
    """{"type": "module:Qualname", "args": {...}} or a container with "children"."""
    tname = f"{type(m).__module__}:{type(m).__qualname__}"
    if type(m) in _CONTAINERS:
        return {"type": tname, "children": {k: module_spec(c, f"{where}.{k}")
                                            for k, c in m.named_children()}}
    args = {}
    for p in list(inspect.signature(type(m).__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            continue
        if p.name == "bias" and not isinstance(getattr(m, "bias", True), bool):
            args["bias"] = m.bias is not None
        elif hasattr(m, p.name) and _is_plain(getattr(m, p.name)):
            args[p.name] = getattr(m, p.name)
        elif p.default is p.empty:
            raise _NoSpec(where)
    spec = {"type": tname, "args": args}
    try:
        rebuilt = build_module(spec, trust_code=True)
    except Exception as exc:  # any constructor failure means the spec is not faithful
        raise _NoSpec(where) from exc
    if type(rebuilt) is not type(m) or _signature(rebuilt) != _signature(m) or dict(
            rebuilt.named_children()).keys() != dict(m.named_children()).keys():
        raise _NoSpec(where)
    return spec


def build_module(spec: dict, trust_code: bool = False, where: str = "") -> nn.Module:
    """The module a spec describes; its type must pass tuneless.trust unless trust_code."""
    from tuneless.trust import resolve_module_type

    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise TunelessError(f"corrupt module spec in {where or 'the file'}: no type")
    cls = resolve_module_type(spec["type"], trust_code, where)
    if "children" in spec:
        obj = cls()
        for k, child in spec["children"].items():
            obj.add_module(k, build_module(child, trust_code, where))
        return obj
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise TunelessError(f"corrupt module spec {spec['type']} in {where or 'the file'}")
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise TunelessError(f"cannot rebuild {spec['type']}{_in(where)}: {exc}") from exc


def _swap_in(model: nn.Module, specs: dict[str, dict], sd: dict | None = None,
             trust_code: bool = False, where: str = "") -> nn.Module:
    if "" in specs and "resize" not in specs[""]:
        return build_module(specs[""], trust_code, where)
    for name in sorted(specs, key=lambda n: n.count(".")):
        if "resize" in specs[name]:
            _resize(model.get_submodule(name) if name else model, name, specs[name]["resize"],
                    sd)
            continue
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError as exc:
            raise TunelessError(f"saved module {name!r} has no parent in the architecture") from exc
        setattr(parent, child, build_module(specs[name], trust_code, where))
    return model


def _resize(m: nn.Module, name: str, tensors: list[str], sd: dict | None) -> None:
    """Give m's own tensors the saved shapes (values come from load_state_dict)."""
    for t in tensors:
        key = f"{name}.{t}" if name else t
        if sd is None or key not in sd:
            raise TunelessError(f"saved model lacks tensor {key!r}")
        new = torch.empty_like(sd[key])
        if t in m._parameters:
            m._parameters[t] = nn.Parameter(new, requires_grad=m._parameters[t].requires_grad)
        else:
            m._buffers[t] = new


def _is_plain(v) -> bool:
    if isinstance(v, _PRIMITIVE):
        return True
    if isinstance(v, tuple | list):
        return all(_is_plain(x) for x in v)
    return False


def _plain(obj):
    """JSON-safe copy (so the file loads with weights_only=True); tuples become lists."""
    if obj is None:
        return None
    return json.loads(json.dumps(obj, default=str))
