"""Out-of-core folding: stream one decoder layer at a time between sharded safetensors.

Only one layer's tensors (plus one embedding-sized tensor when copying the
embeddings/lm_head) are in memory at any time, so a model far larger than RAM
can be folded. The output is a new sharded checkpoint (one shard per layer),
written into a temporary folder beside the target and renamed at the end; the
input folder is only read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from tuneless.distributed import barrier, from_main, init_from_env, is_main, shard, world
from tuneless.errors import TunelessError
from tuneless.io_atomic import atomic_folder
from tuneless.llm.adapters import adapter_for_config, layer_graph
from tuneless.llm.choose import HELD_OUT, choose, default_candidates, own_text_perplexity
from tuneless.llm.decide import check_kmeans_dim, fold_decisions
from tuneless.llm.fold import (
    CALIB_SKIP,
    DEFAULT_REPAIR,
    DEFAULT_STEPS,
    checked_plans,
    default_steps,
    step_plans,
)
from tuneless.llm.obs import OBS_CALIB_SKIP
from tuneless.llm.plan import SCHEDULES, LayerPlan, Shape
from tuneless.llm.refit import check_refit_options
from tuneless.llm.save import spec_size, write_modeling
from tuneless.llm.stream_shell import split_layer_keys
from tuneless.options import int_or_auto
from tuneless.progress import progress as _progress
from tuneless.reduce import reduce_tensors


def _weight_map(src: Path) -> dict[str, str]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    single = src / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as fh:
            return {k: single.name for k in fh.keys()}
    raise TunelessError(f"{src} has neither model.safetensors.index.json nor model.safetensors")


class _Reader:
    """Reads single tensors from the shards, keeping at most one shard handle open."""

    def __init__(self, src: Path, weight_map: dict[str, str]):
        self.src, self.map, self._name, self._fh = src, weight_map, None, None

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self.map:
            raise TunelessError(f"tensor {key} missing from the checkpoint index")
        name = self.map[key]
        if name != self._name:
            self._fh = None  # release the previous shard before opening the next
            self._fh = safe_open(str(self.src / name), framework="pt")
            self._name = name
        return self._fh.get_tensor(key)  # an owned copy; no second clone (peak memory)


def _shapes(config, adapter, weight_map, per_layer: bool = False) -> list[Shape]:
    """Each decoder layer's sizes; per_layer: also from a per-layer folded checkpoint (its
    `tuneless_layer_sizes`: a step of a stepped fold), which users fold from the original."""
    hd = adapter.head_dim(config)
    n_q, n_kv = config.num_attention_heads, adapter.num_kv_heads(config)
    bias = adapter.tensor_name(0, "q", "bias") in weight_map
    o_bias = adapter.tensor_name(0, "o", "bias") in weight_map
    mlp_bias = adapter.tensor_name(0, "gate", "bias") in weight_map
    sizes = getattr(config, "tuneless_layer_sizes", None)
    if sizes and not per_layer:
        raise TunelessError("this checkpoint is already folded per layer; fold the original")
    if not sizes:
        sizes = [(n_q, n_kv, adapter.mlp_width(config))] * config.num_hidden_layers
    return [Shape(config.hidden_size, hd, q, kv, f, bias, o_bias, mlp_bias,
                  mlp_mats=adapter.mlp_mats)
            for q, kv, f in sizes]


def fold_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, sparsity: float | None = None,
                    *, schedule=None, head_ratio: float | None = None,
                    mlp_ratio: float | None = None, gqa: str = "kv-groups", seed: int = 0,
                    refine: bool = False, kmeans_dim: int | str | None = "auto",
                    n_init: int = 1,
                    repair: str | None = DEFAULT_REPAIR, data: torch.Tensor | None = None,
                    tokenizer=None,
                    features: str = "auto", calib_samples: int = 16, calib_len: int = 128,
                    calib_skip: int = CALIB_SKIP,
                    refit_lambda: float = 3.0, refit_target: str = "auto",
                    refit_weighting: str = "none", steps: int | None = None,
                    progress: bool = True) -> Path:
    """Fold a sharded safetensors checkpoint folder into a new folder, layer by layer.

    Same options, defaults and schedule as fold_llm: k-means without Hartigan refinement, on
    the full features where that is cheap and on a 128-dimensional random projection where
    it is not (kmeans_dim="auto", tuneless.llm.decide.projection_width), which keeps a
    multi-billion-parameter layer to seconds on a CPU.

    repair: as fold_llm's, and the same default (None means the default). "self" (data-free)
    first samples calib_samples × calib_len tokens from the checkpoint itself with its
    layers built one at a time for each decoding step
    (tuneless.llm.stream_shell.sampling_model: the same samples as the loaded float32 model
    gives; every step reads every layer, so sampling costs about calib_len passes over the
    checkpoint's tensors), then refits as "refit" does. "refit" streams the least-squares
    repair on token ids from `data` (batch, seq_len), or on calib_samples windows of the
    calibration text when a `tokenizer` is given; "none" folds only. With features="auto"
    the k-means features are activation-aware, from the calibration tokens. Memory: one
    original and one folded layer in float32, the embeddings in float32 while sampling, the
    calibration hidden states and the refit's normal equations.

    steps: as fold_llm's, and the same default (None): each step after the first folds
    the previous step's checkpoint, written into a temporary folder beside `dst` and
    removed at the end.
    """
    src, dst = Path(src), Path(dst)
    repair = DEFAULT_REPAIR if repair is None else "none" if repair == "naive" else repair
    if repair not in ("self", "refit", "none"):
        raise TunelessError(f"streamed folding repairs with 'self', 'refit' or 'none', not "
                            f"{repair!r}")
    if features not in ("auto", "weights", "activations"):
        raise TunelessError(f"features={features!r}; choose auto, weights or activations")
    check_refit_options("folded", refit_target, refit_weighting, refit_lambda)
    check_kmeans_dim(kmeans_dim)
    steps = default_steps(repair) if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise TunelessError(f"steps must be a positive integer, got {steps!r}")
    config, adapter, weight_map, shapes = _open(src, dst, "fold")
    candidates = None
    if (schedule, head_ratio, mlp_ratio) == (None, None, None) and sparsity is not None \
            and repair in ("self", "refit"):  # chosen by measurement, as in memory
        candidates = default_candidates(shapes, sparsity, gqa)
        schedule = candidates.primary
    plans = checked_plans(adapter, shapes, sparsity, schedule, head_ratio, mlp_ratio, gqa)
    once = dict(gqa=gqa, seed=seed, refine=refine, kmeans_dim=kmeans_dim, n_init=n_init,
                repair=repair, data=data, tokenizer=tokenizer, features=features,
                calib_samples=calib_samples, calib_len=calib_len, calib_skip=calib_skip,
                refit_lambda=refit_lambda, refit_target=refit_target,
                refit_weighting=refit_weighting, progress=progress)
    source = (src, config, adapter, weight_map, shapes)
    if candidates is None or candidates.alternative is None:
        return _fold_stepped(source, dst, plans, steps, once)
    first, held = _first_calibration(source, once)
    base = _own_text(src, held, config)
    with _work_folder(dst, "choice") as work:
        def build(name):
            stage = checked_plans(adapter, shapes, sparsity, name, None, None, gqa)
            return _fold_stepped(source, work / name, stage, steps, once, first)

        kept, record = choose(candidates, build, lambda f: _own_text(f, held) / base, held)
        if is_main():
            cfg = json.loads((kept / "config.json").read_text())
            cfg["tuneless_schedule_choice"] = record
            (kept / "config.json").write_text(json.dumps(cfg, indent=1))
            os.replace(kept, dst)
        barrier()
    return dst


def obs_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                   sparsity: float | None = None, *, schedule=None,
                   head_ratio: float | None = None, mlp_ratio: float | None = None,
                   gqa: str = "kv-groups", repair: str = "self", data: torch.Tensor | None = None,
                   tokenizer=None, calib_samples: int = 16, calib_len: int = 128, seed: int = 0,
                   refit_lambda: float = 3.0, damp: float = 0.01, block: int = 8,
                   calib_skip: int = OBS_CALIB_SKIP, stats_skip: int = 0,
                   progress: bool = True) -> Path:
    """Structured OBS (tuneless.llm.obs.obs_prune_llm) of a safetensors checkpoint folder,
    layer by layer: the same defaults (flat-mlp schedule, "self" repair), and each layer's
    consumer second moments measured on the original stream as it streams by (one layer's
    statistics in memory). repair: "self" or "refit" (OBS needs calibration tokens)."""
    from tuneless.llm.activation_stats import layer_moments
    from tuneless.llm.obs import obs_decisions, shrinking
    from tuneless.llm.plan import OBS_DEFAULTS
    from tuneless.options import check_call

    src, dst = Path(src), Path(dst)
    check_call(obs_checkpoint, {"sparsity": sparsity, "seed": seed, "damp": damp,
                                "block": block, "calib_skip": calib_skip,
                                "stats_skip": stats_skip, "calib_samples": calib_samples,
                                "calib_len": calib_len}, "obs")
    if repair not in ("self", "refit"):
        raise TunelessError(f"streamed OBS repairs with 'self' or 'refit', not {repair!r} (its "
                            "second moments come from the repair's calibration tokens)")
    config, adapter, weight_map, shapes = _open(src, dst, "obs")
    plans = checked_plans(adapter, shapes, sparsity, schedule, head_ratio, mlp_ratio, gqa,
                          OBS_DEFAULTS)

    def decide(walk, i, tensors, groups, shape, plan):
        moments, _ = layer_moments(adapter, walk.original, walk.h_old, walk.kwargs[i],
                                   shrinking(shape, plan), skip=stats_skip, tape=walk.taped())
        return obs_decisions(adapter, i, groups, shape, plan, moments,
                             lambda short: tensors[adapter.tensor_name(i, short)],
                             block=block, damp=damp)

    return _fold_once(src, dst, config, adapter, weight_map, shapes, plans, gqa=gqa, seed=seed,
                      refine=False, kmeans_dim=None, n_init=1, repair=repair, data=data,
                      tokenizer=tokenizer, features="weights", calib_samples=calib_samples,
                      calib_len=calib_len, calib_skip=calib_skip, refit_lambda=refit_lambda,
                      refit_target="auto", refit_weighting="none", progress=progress,
                      decide=decide)


def _open(src: Path, dst: Path, method: str) -> tuple:
    """(config, adapter, weight map, layer shapes) of the checkpoint folder `src`, after the
    checks every streamed method makes: a config, a new output folder, no Conv1D."""
    from transformers import AutoConfig

    if not (src / "config.json").is_file():
        raise TunelessError(f"{src} has no config.json; not a checkpoint folder")
    if dst.exists():
        raise TunelessError(f"{dst} already exists; choose a new output folder")
    config = AutoConfig.from_pretrained(str(src))
    adapter = adapter_for_config(config)
    if adapter.conv1d:
        raise TunelessError(f"streaming does not handle {adapter.family}'s Conv1D projections "
                            f"yet; run it in memory (tuneless compress FOLDER --method {method})")
    weight_map = _weight_map(src)
    return config, adapter, weight_map, _shapes(config, adapter, weight_map)


@contextlib.contextmanager
def _work_folder(dst: Path, what: str):
    """A temporary folder beside `dst` (rank 0 makes it, every rank reads it), removed at the
    end whatever happens."""
    import tempfile

    work = None
    if is_main():
        dst.parent.mkdir(parents=True, exist_ok=True)
        work = tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.{what}.")
    work = Path(from_main(work))  # under torchrun: every rank reads rank 0's folders
    try:
        yield work
    finally:
        if is_main():
            shutil.rmtree(work, ignore_errors=True)


def _fold_stepped(source: tuple, dst: Path, plans: list[LayerPlan], steps: int, once: dict,
                  first: torch.Tensor | None = None) -> Path:
    """The checkpoint in `source` folded to `plans` in `steps` repaired folds into `dst`;
    `first`: the first fold's calibration ids when already drawn."""
    src, config, adapter, weight_map, shapes = source
    if steps == 1:
        return _fold_once(src, dst, config, adapter, weight_map, shapes, plans, **once,
                          ids=first)
    with _work_folder(dst, "steps") as work:
        current, stages = src, step_plans(shapes, plans, steps)
        for k, stage in enumerate(stages, start=1):
            out = dst if k == len(stages) else work / f"step{k}"
            cfg = config if k == 1 else _step_config(current)
            wmap = weight_map if k == 1 else _weight_map(current)
            _fold_once(current, out, cfg, adapter, wmap, _shapes(cfg, adapter, wmap, True),
                       stage, **once, ids=first if k == 1 else None)
            barrier()  # under torchrun: rank 0's folder is there before anyone reads it
            current = out
    return dst


def _first_calibration(source: tuple, once: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """As the in-memory fold's: (this rank's calibration ids for the first fold, the ones an
    unguarded fold draws; HELD_OUT rows to judge the folds on: the self-sampled rows after
    them, in the same batch and kept out of the repair, or on real text the first
    calibration rows)."""
    src, config, adapter, weight_map, _ = source
    n, length, seed, tok = once["calib_samples"], once["calib_len"], once["seed"], once["tokenizer"]
    if once["repair"] == "self":
        ids = _self_calibration(src, config, adapter, _Reader(src, weight_map), weight_map, tok,
                                n + HELD_OUT, length, seed, once["progress"], keep_all=True)
        return shard(ids[:n]), ids[n:]
    from tuneless.llm.fold import calibration_ids

    first = _calibration(once["data"], tok, n, length, seed)
    return first, calibration_ids(None, "refit", tok, once["data"], n, length, seed)[:HELD_OUT]


def _own_text(folder: Path, held: torch.Tensor, config=None) -> float:
    """own_text_perplexity of the checkpoint in `folder`, one layer in memory at a time."""
    from tuneless.llm.stream_shell import sampling_model

    config = _step_config(folder) if config is None else config
    weight_map = _weight_map(folder)
    model = sampling_model(config, adapter_for_config(config), _Reader(folder, weight_map).get,
                           list(weight_map))
    return own_text_perplexity(model, held)


def _step_config(folder: Path):
    """The config of a step's checkpoint as the next step reads it: its own layer sizes
    (`tuneless_layer_sizes`), without the auto_map that points at its modeling file (the
    streamed fold builds its layers itself)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    if hasattr(config, "auto_map"):
        del config.auto_map
    return config


def _fold_once(src: Path, dst: Path, config, adapter, weight_map, shapes, plans, *, gqa, seed,
               refine, kmeans_dim, n_init, repair, data, tokenizer, features, calib_samples,
               calib_len, calib_skip, refit_lambda, refit_target, refit_weighting, progress,
               ids=None, decide=None) -> Path:
    """One streamed fold of the checkpoint in `src` to `plans`, repaired (on `ids` when
    already drawn), into `dst`. decide(walk, i, tensors, groups, shape, plan) -> decisions:
    another method's choice of units (streamed OBS) in place of k-means."""
    from safetensors.torch import save_file

    reader = _Reader(src, weight_map)
    walk = None
    if repair in ("self", "refit"):
        if ids is None:
            ids = (_self_calibration(src, config, adapter, reader, weight_map, tokenizer,
                                     calib_samples, calib_len, seed, progress)
                   if repair == "self" else _calibration(data, tokenizer, calib_samples,
                                                          calib_len, seed))
        walk = _RepairWalk(config, adapter, reader, weight_map, ids, features != "weights",
                           dict(lam=refit_lambda, target=refit_target, weighting=refit_weighting,
                                skip=calib_skip))
    elif features == "activations":
        raise TunelessError("features='activations' needs calibration tokens: repair='self' "
                            "or 'refit'")
    n_layers = len(shapes)
    layer_keys, other_keys = split_layer_keys(weight_map, adapter.layer_prefix + ".", n_layers)
    n_shards = n_layers + len(other_keys)
    new_map, total = {}, 0
    main = is_main()  # under torchrun every rank computes the same fold; rank 0 writes it
    with (atomic_folder(dst) if main else _nowhere()) as tmp:
        def write(tensors: dict[str, torch.Tensor], k: int) -> None:
            nonlocal total
            if not main:
                return
            name = f"model-{k:05d}-of-{n_shards:05d}.safetensors"
            save_file({key: t.contiguous() for key, t in tensors.items()}, str(tmp / name),
                      metadata={"format": "pt"})
            for key, t in tensors.items():
                new_map[key] = name
                total += t.numel() * t.element_size()

        for k, key in enumerate(other_keys, start=1):  # embeddings, final norm, lm_head
            write({key: reader.get(key)}, k)
        for i in _progress(range(n_layers), total=n_layers, desc="fold (streaming)",
                           unit="layer", disable=not progress):
            tensors = {key: reader.get(key) for key in layer_keys[i]}
            s, p = shapes[i], plans[i]
            stats = walk.stats(i, tensors) if walk is not None else None
            if p != LayerPlan(s.n_q, s.n_kv, s.n_mlp):
                graph, per = layer_graph(adapter, shapes, gqa, [i])
                decisions = (decide(walk, i, tensors, per[i], s, p) if decide is not None else
                             fold_decisions(adapter, tensors, per[i], s, p, seed=seed + 1000 * i,
                                            n_init=n_init, refine=refine, dim=kmeans_dim,
                                            stats=stats))
                tensors.update(reduce_tensors(tensors, graph, decisions))
            if walk is not None:
                tensors = walk.repair(i, tensors)
            write(tensors, len(other_keys) + i + 1)
            del tensors
        if not main:
            return dst
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": new_map}, indent=1))
        cfg = json.loads((src / "config.json").read_text())
        cfg["head_dim"] = shapes[0].head_dim
        fields = adapter.config_fields(config.hidden_size, plans)  # as an in-memory fold
        for k, v in fields.items():  # None: a field that the new sizes do not have
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        if "tuneless_layer_sizes" not in cfg:  # a step's modeling file does not travel on
            cfg.pop("auto_map", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        if "tuneless_layer_sizes" in cfg:
            write_modeling(adapter, (cfg.get("architectures") or ["LlamaForCausalLM"])[0], tmp)
        for f in src.iterdir():  # tokenizer and generation files travel with the model
            if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (
                    "config.json", "model.safetensors.index.json", "modeling_tuneless.py"):
                shutil.copy2(f, tmp / f.name)
    return dst


@contextlib.contextmanager
def _nowhere():
    yield None


def _calibration(data, tokenizer, n: int, seq_len: int, seed: int) -> torch.Tensor:
    from tuneless.llm.fold import calibration_ids

    if data is None and tokenizer is None:
        raise TunelessError("repair='refit' needs data= token ids or tokenizer= (calibration "
                            "text)")
    ids = calibration_ids(None, "refit", tokenizer, data, n, seq_len, seed)  # as in memory
    if ids.dim() != 2 or ids.shape[1] < 2 or ids.is_floating_point():
        raise TunelessError(f"calibration ids must be integer (batch, seq_len ≥ 2), got "
                            f"{tuple(ids.shape)}")
    return shard(ids)  # under torchrun: this rank's sequences; the refit all-reduces


def _self_calibration(src: Path, config, adapter, reader, weight_map, tokenizer, n: int,
                      seq_len: int, seed: int, show_progress: bool,
                      keep_all: bool = False) -> torch.Tensor:
    """The in-memory fold's data-free calibration text, sampled from the checkpoint with one
    layer in memory at a time; under torchrun every rank samples all and keeps its share
    (all of it with keep_all)."""
    from transformers import GenerationConfig

    from tuneless.llm.refit import self_generated
    from tuneless.llm.stream_shell import sampling_model

    generation = None
    if (src / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(str(src))
    model = sampling_model(config, adapter, reader.get, list(weight_map), generation)
    ids = self_generated(model, tokenizer, n, seq_len, seed, show_progress and is_main())
    return ids if keep_all else shard(ids)


class _RepairWalk:
    """The two residual streams (original, folded) walked through the layers as they stream
    by, with the per-layer statistics and refit of the in-memory repair."""

    def __init__(self, config, adapter, reader, weight_map, ids, activations: bool,
                 refit: dict) -> None:
        from tuneless.llm.stream_shell import Shell

        self.adapter, self.activations, self.refit = adapter, activations, refit
        self.shell = Shell(config, adapter, reader.get, list(weight_map))
        self.h_old, self.kwargs = self.shell.inputs(ids)
        self.shell.release_embeddings()
        self.h_new = self.h_old.clone()
        self.original = self.tape = None

    def stats(self, i: int, tensors: dict[str, torch.Tensor]):
        from tuneless.llm.activation_stats import layer_stats

        self.original = self.shell.layer(i, tensors)
        if not self.activations:
            return None
        return layer_stats(self.adapter, self.original, self.h_old, self.kwargs[i],
                           skip=self.refit["skip"], tape=self.taped())

    def taped(self):
        """A tape of the current original layer: a pass over it that records into the tape
        (the statistics', or another method's second moments) saves the refit its run."""
        from tuneless.llm.refit import ReferenceTape

        self.tape = ReferenceTape(self.adapter, [self.original], self.h_old.shape[:2])
        return self.tape

    def repair(self, i: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Refit layer i's consumers; the folded layer's tensors in the checkpoint's dtypes."""
        from tuneless.llm.refit import refit_layer

        folded = self.shell.layer(i, tensors)
        reference = None if self.tape is None else self.tape.layer(0, self.h_old.shape[:2])
        self.h_old, self.h_new = refit_layer(self.adapter, self.original, folded, self.h_old,
                                             self.h_new, self.kwargs[i], **self.refit,
                                             reference=reference)
        self.original = self.tape = None
        prefix = f"{self.adapter.layer_prefix}.{i}."
        state = folded.state_dict()
        return {key: state[key[len(prefix):]].to(t.dtype) for key, t in tensors.items()}


def check_checkpoint(folder: str | os.PathLike) -> int:
    """Check every projection's shape in a (folded) checkpoint against its config, reading
    only the safetensors headers; returns the number of parameters."""
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))
    adapter = adapter_for_config(config)
    weight_map = _weight_map(folder)
    hd, h = adapter.head_dim(config), config.hidden_size
    sizes = getattr(config, "tuneless_layer_sizes", None) or [
        [config.num_attention_heads, adapter.num_kv_heads(config), adapter.mlp_width(config)]
    ] * config.num_hidden_layers
    shapes = {}
    for name in sorted(set(weight_map.values())):
        with safe_open(str(folder / name), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    for i, (n_q, n_kv, n_mlp) in enumerate(sizes):
        sizes_of = {"h": h, "hd": hd, "n_q": n_q, "n_kv": n_kv, "n_mlp": n_mlp}
        for parent, attr, n_in, n_out in adapter.projection_specs():
            shape = (spec_size(n_out, sizes_of), spec_size(n_in, sizes_of))
            got = shapes.get(f"{adapter.spec_name(i, parent, attr)}.weight")
            if adapter.conv1d and got is not None:
                got = got[::-1]  # Conv1D stores (in, out)
            if got != shape:
                raise TunelessError(f"layer {i} {attr}: shape {got}, config says {shape}")
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def main(argv: list[str] | None = None) -> int:
    """python -m tuneless.llm.stream SRC DST --sparsity 0.2 [--schedule paper]"""
    import argparse
    import resource
    import time

    ap = argparse.ArgumentParser(prog="python -m tuneless.llm.stream",
                                 description="fold a sharded safetensors LLaMA checkpoint "
                                             "layer by layer (out of core)")
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--schedule", default=None, choices=SCHEDULES,
                    help="per-layer ratios (default: chosen by measurement as in memory: "
                         "inner-mlp unless it more than doubles the perplexity on held-out "
                         "self-sampled text, then the better of it and paper-mlp)")
    ap.add_argument("--gqa", default="kv-groups")
    ap.add_argument("--kmeans-dim", type=int_or_auto, metavar="N|auto", default="auto",
                    help="'auto' (default: full features where cheap, a 128-wide projection "
                         "where not) or a projection width")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repair", default=DEFAULT_REPAIR, choices=("self", "refit", "none"),
                    help="self (default, data-free, as in memory): the least-squares repair on "
                         "text the checkpoint samples itself; refit: on calibration text from "
                         "the checkpoint's tokenizer, or --calib-ids; none: fold only")
    ap.add_argument("--calib-ids", type=Path,
                    help="a torch.save'd integer tensor (batch, seq_len) of calibration ids")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None,
                    help=f"fold in this many steps, each repaired (default {DEFAULT_STEPS}, as "
                         "in memory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    init_from_env()  # under torchrun: calibration sharded, statistics all-reduced
    start = time.perf_counter()
    try:
        data, tok = None, None
        if args.repair == "refit" and args.calib_ids is not None:
            try:
                data = torch.load(args.calib_ids, weights_only=True)  # tensors only, no code
            except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
                raise TunelessError(f"--calib-ids {args.calib_ids}: not a saved tensor "
                                    f"({str(exc).splitlines()[0][:120]})") from exc
            if not isinstance(data, torch.Tensor):
                raise TunelessError(f"--calib-ids {args.calib_ids} holds a "
                                    f"{type(data).__name__}, not a tensor of token ids")
        elif args.repair == "refit":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(args.src))
        fold_checkpoint(args.src, args.dst, args.sparsity, schedule=args.schedule, gqa=args.gqa,
                        kmeans_dim=args.kmeans_dim, repair=args.repair, data=data,
                        tokenizer=tok, calib_samples=args.calib_samples,
                        calib_len=args.calib_len, steps=args.steps)
    except (TunelessError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seconds = time.perf_counter() - start
    if not is_main():  # the folder is rank 0's to write; each rank reports its own memory
        print(f"rank {world()[0]}: {seconds:.0f} s; peak RSS {peak:.2f} GiB")
        return 0
    size = sum(f.stat().st_size for f in args.dst.glob("*.safetensors")) / 2**30
    src = sum(f.stat().st_size for f in args.src.glob("*.safetensors")) / 2**30
    print(f"folded {args.src} ({src:.2f} GiB) -> {args.dst} ({size:.2f} GiB) in "
          f"{seconds:.0f} s; peak RSS {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
