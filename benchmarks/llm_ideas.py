"""Ideas for better data-free LLM folding, measured on SmolLM2-135M at 20% of block
parameters (issue 20 item 3). Each prints one JSON line per setting: WikiText-2 perplexity
on the first 2,048 test tokens (dense 29.92) and CPU seconds of the fold. One thread.
`--model FILE_OR_FOLDER` first runs an experiment on another model (loaded as
benchmarks/llm_other_family.py loads it; its dense perplexity measured first).

    python benchmarks/llm_ideas.py allocation '{"norm": "rel"}' '{"norm": "errt"}'
    python benchmarks/llm_ideas.py sampling '{"temperature": 0.7}' '{"top_p": 0.9}'
    python benchmarks/llm_ideas.py features '{"seed": 0}'
    python benchmarks/llm_ideas.py refit-lambda '{"layers": [12, 16, 20, 24]}'
    python benchmarks/llm_ideas.py producers '{"lam": 1.0}' '{"lam": 0.1}'
    python benchmarks/llm_ideas.py merge-weights '{"mode": "rmscol"}' '{"mode": "rms"}'
    python benchmarks/llm_ideas.py obs '{"mode": "select"}' \
        '{"mode": "centers", "allocation": "global"}'
    python benchmarks/llm_ideas.py select '{"seed": 0, "candidates": [{"schedule": \
        "paper-mlp"}, {"schedule": "inner-mlp"}, {"schedule": "inner-mlp", "seed": 1}]}'
    python benchmarks/llm_ideas.py in-domain '{"samples": 16, "len": 128, "seed": 0}'
    python benchmarks/llm_ideas.py balance '{"mode": "balance", "seed": 0}' '{"mode": "none"}'
    python benchmarks/llm_ideas.py steps '{"mode": "resolve", "seed": 0}' '{"mode": "anchor"}' \
        '{"mode": "widths"}'
    python benchmarks/llm_ideas.py obs-steps '{"steps": 2, "seed": 0}' '{"steps": 1}'
    python benchmarks/llm_ideas.py bias '{"seed": 0}' '{"seed": 1}' '{"seed": 2}'
    python benchmarks/llm_ideas.py reuse '{"seed": 0}' '{"calib_samples": 32, "seed": 0}'
    python benchmarks/llm_ideas.py upfit '{"rank": 128, "lam": 1.0, "seed": 0}'
    python benchmarks/llm_ideas.py representative '{"mode": "any", "seed": 0}'
    python benchmarks/llm_ideas.py first-weight '{"sparsity": 0.4, "seed": 0}'

allocation: per-layer MLP fold ratios chosen from measured error curves (each layer folded
  alone at 10–60% on the self-generated calibration tokens, ridge-refit, output error
  weighted by "rel" = 1/E||residual||², "errt" = per-token ||error||²/||residual||²,
  "abs" = unweighted, "y" = 1/E||MLP output||²), greedy on the curves to the same budget;
  compare with the default paper-mlp schedule.
sampling: the self-generated calibration text drawn at another temperature / top-p.
features: k-means on activation-space features (each channel's activations over the
  calibration tokens × the norm of its down_proj column) instead of whitened weights.
refit-lambda: one layer's MLP folded to 50% alone, ridge-refit on 16×128 self-generated
  tokens at several λ; the error on 16×128 other self-generated tokens (held out), as a
  fraction of the MLP output's energy (prints one line per layer).
producers: before each layer's consumer refit, every producer (q/k/v, gate/up) re-solved
  so that on the folded stream it gives what it gave on the original stream (one ridge
  solve per norm input, λ `lam` towards the identity): the input drift corrected too.
merge-weights: a merged MLP channel's gate/up rows are its members' rows weighted by
  their contribution scale ("rmscol": activation RMS × down_proj column norm; "rms": RMS
  alone) instead of the plain mean; down_proj columns still summed, then the refit.
select: whether the folded model's perplexity on other self-generated sequences (no data)
  ranks candidate folds (schedules, k-means seeds) as WikiText-2 does.
balance: the SwiGLU up/down scale symmetry (up row × α, down column ÷ α leaves the model
  unchanged) put in one canonical scale before the default fold: "balance" ‖up_j‖ = ‖down_j‖
  (the CNN fold's `balance=True`, tuneless.rescale), "unit-up" ‖up_j‖ = the layer's mean,
  "none" the default fold from the same script.
steps: what makes a fold in two steps (fold_llm(steps=2)) better. "resolve": the second
  step re-resolves the default schedule on the first step's model (10% of the block
  parameters, then the rest of 20%); "anchor": the default plan's midpoint, then its final
  widths with the second refit aiming at the ORIGINAL model on the original's samples
  (one sampling, not two); "anchor-own": the same aim at the original model, but on the
  samples of the first step's model (the default's second-step samples, so it differs
  from the default only in what the second refit aims at); "widths": one step, but to the
  widths "resolve" ends at.
obs-steps: structured OBS pruning (its default flat-mlp plan at `sparsity`) reached in
  `steps` prunes, each sampling, measuring and repairing on the model it starts from.
representative: the default fold (k-means clusters, two steps, refit), but each MLP cluster
  of two or more channels is carried by the candidate activation that best reconstructs the
  cluster's own share of the MLP output on the calibration tokens (max ‖Y_cᵀa‖²/‖a‖²,
  Y_c = Σ_j a_j w_jᵀ): "any" chooses among the merged channel (mean gate/up rows, the
  default) and each member's own rows; "members" among the members only (a pruning inside
  each cluster); down_proj columns summed, then the refit.
first-weight: the default fold (its statistics without the first position), but each
  least-squares refit keeps every sequence's first position with a weight that brings its
  input row to the median row's squared norm (at most 1) instead of leaving it out.
bias: the default fold, its down_proj refit given an unpenalised bias (an intercept fitted
  with the weights; FLAP's bias compensation inside the least squares; LLaMA's mlp_bias).
reuse: the two-step default with ONE sampling: the original model's samples serve both
  steps (the second step's statistics and refit target are the first step's model on
  them), the sampling saved spent on `calib_samples` sequences (default 16).
upfit: each merged MLP channel's up row re-solved (least squares on the folded layer's
  inputs, its averaged gate fixed) so that the channel carries what its members carried,
  projected on its summed down column (t_c = Σ_j (D_cᵀD_j/‖D_c‖²) a_j); solved in the top
  `rank` principal directions of the inputs (ridge `lam` × mean diagonal, towards the
  averaged row), before the default consumer refit. The merge itself fitted, not averaged.
in-domain: the upper reference for the calibration text: the same fold and refit
  (repair="refit") on WikiText-2 itself, `samples` windows of `len` tokens drawn (seeded)
  from the test split after its first 4,096 tokens, disjoint from the 2,048 evaluated.
"""

from __future__ import annotations

import json
import sys
import time

import torch

SILU = torch.nn.functional.silu


def error_curves(model, calib, ratios, seed=0):
    """Per layer: MLP output error after folding that layer alone at each ratio + refit."""
    from tuneless.decisions import merge
    from tuneless.llm.activation_stats import collect_stats
    from tuneless.llm.adapters import adapter_for, layer_graph, whitening
    from tuneless.llm.decide import kmeans_labels
    from tuneless.llm.refit import ridge_refit

    stats = collect_stats(model, calib)
    ad = adapter_for(model)
    layers = ad.layers(model)
    xs, res = {}, {}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(ad.projections(layer)["gate"].register_forward_pre_hook(
            lambda _m, a, i=i: xs.__setitem__(i, a[0].reshape(-1, a[0].shape[-1]))))
        hooks.append(layer.register_forward_hook(
            lambda _m, _a, o, i=i: res.__setitem__(
                i, (o[0] if isinstance(o, tuple) else o).reshape(xs[i].shape).pow(2).sum(1))))
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for h in hooks:
        h.remove()
    _, per = layer_graph(ad, ad.shapes(model), "kv-groups")
    out = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            p = ad.projections(layer)
            g, u, d = p["gate"].weight, p["up"].weight, p["down"].weight
            x = xs[i]
            y = (SILU(x @ g.T) * (x @ u.T)) @ d.T
            feats = per[i].mlp.features(model, transform=whitening(stats[i], per[i].roles))
            row = {"y2": float(y.pow(2).sum(1).mean()), "r2": float(res[i].mean()), "err": [],
                   "errt": []}
            for r in ratios:
                k = max(1, round(g.shape[0] * (1 - r)))
                m, onehot = merge(kmeans_labels(feats, k, seed=seed + 1000 * i, refine=False), k)
                h = SILU(x @ (m @ g).T) * (x @ (m @ u).T)
                e = (h @ ridge_refit(h, y, d @ onehot, 3.0).T - y).pow(2).sum(1)
                row["err"].append(float(e.mean()))
                row["errt"].append(float((e / res[i]).mean()))
            out.append(row)
    return out


def allocate(curves, ratios, norm, mean_ratio, step=0.025, cap=0.6):
    """Greedy MLP ratios per layer on piecewise-linear error curves, mean = mean_ratio."""
    rs = [0.0, *ratios]

    def err(i, r):
        es = [0.0, *curves[i]["errt" if norm == "errt" else "err"]]
        for a, b, ea, eb in zip(rs, rs[1:], es, es[1:]):
            if r <= b + 1e-9:
                return ea + (eb - ea) * (r - a) / (b - a)
        return es[-1]

    weight = [1.0 if norm in ("abs", "errt") else 1.0 / c["r2" if norm == "rel" else "y2"]
              for c in curves]
    r = [0.0] * len(curves)
    while sum(r) < mean_ratio * len(curves) - 1e-9:
        _, best = min((weight[i] * (err(i, r[i] + step) - err(i, r[i])), i)
                      for i in range(len(curves)) if r[i] + step <= cap + 1e-9)
        r[best] += step
    return r


def main(argv: list[str]) -> int:
    import tuneless
    import tuneless.llm.fold as fold_module
    from tuneless.llm import block_params, load_smollm2
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize
    from tuneless.llm.refit import _special_ids, self_generated

    torch.set_num_threads(1)
    model_path = None
    if argv[:1] == ["--model"]:  # another model (a .gguf file or a folder): llm_other_family
        model_path, argv = argv[1], argv[2:]
    what, specs = argv[0], [json.loads(s) for s in argv[1:]] or [{}]
    if model_path is None:
        model, tok = load_smollm2()
        dense = 29.92
    else:
        from llm_other_family import load

        model, tok = load(model_path)
    if what == "refit-lambda":
        for o in specs:
            _refit_lambda(model, o.get("layers", [12, 16, 20, 24]))
        return 0
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))
    if model_path is not None:
        dense = perplexity_of_ids(model, ids, 512, 2048, progress=False)
    curves = None
    ratios = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for o in specs:
        seed = o.get("seed", 0)
        cpu = time.process_time()
        if what == "allocation":
            if curves is None:
                curves = error_curves(model, self_generated(model, None, 16, 128, seed), ratios)
            # the MLP share of a block: 20% of block parameters from MLPs alone
            mean = 0.2 * block_params(model) / sum(
                sum(p.numel() for p in layer.mlp.parameters()) for layer in model.model.layers)
            r = allocate(curves, ratios, o["norm"], mean, cap=o.get("cap", 0.6))
            small = tuneless.fold(model, schedule={i: (0.0, x) for i, x in enumerate(r)},
                                  seed=seed)
        elif what == "sampling":
            temperature, top_p = o.get("temperature", 1.0), o.get("top_p", 1.0)

            def sample(model, tokenizer=None, n=16, length=128, seed=0, show_progress=False,
                       temperature=temperature, top_p=top_p):
                bos, eos = _special_ids(model, tokenizer)
                state = torch.random.get_rng_state()
                torch.manual_seed(seed)
                prompt = torch.full((n, 1), bos, dtype=torch.long)
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                     do_sample=True, max_new_tokens=length - 1,
                                     min_new_tokens=length - 1, top_k=0, top_p=top_p,
                                     temperature=temperature, pad_token_id=eos)
                torch.random.set_rng_state(state)
                return out[:, :length]

            fold_module.self_generated = sample
            small = tuneless.fold(model, sparsity=0.2, seed=seed)
        elif what == "features":
            small = _fold_on_activations(model, seed)
        elif what == "producers":
            small = _with_producer_refit(model, seed, o.get("lam", 1.0))
        elif what == "merge-weights":
            small = _with_merge_weights(model, seed, o.get("mode", "rmscol"))
        elif what == "obs":
            small = _obs_prune(model, seed, o.get("mode", "select"),
                               o.get("allocation", "paper-mlp"), damp=o.get("damp", 0.01),
                               block=o.get("block", 8), cap=o.get("cap", 0.75))
        elif what == "select":
            _selection_proxy(model, ids, dense, seed, o["candidates"], o.get("held_out", 8),
                             o.get("repair", "refit"))
            continue
        elif what == "balance":
            small = tuneless.fold(_balanced_mlps(model, o.get("mode", "balance")),
                                  sparsity=0.2, seed=seed)
        elif what == "steps":
            small = _stepped(model, seed, o.get("mode", "resolve"))
        elif what == "reuse":
            small = _sampled_once(model, seed, o.get("calib_samples", 16))
        elif what == "bias":
            small = _with_bias_refit(model, seed)
        elif what == "first-weight":
            small = _with_first_weight(model, seed, o.get("sparsity", 0.2))
        elif what == "representative":
            small = _with_representatives(model, seed, o.get("mode", "any"))
        elif what == "upfit":
            small = _with_up_fit(model, seed, o.get("rank", 128), o.get("lam", 1.0),
                                 o.get("target", "project"))
        elif what == "obs-steps":
            small = _obs_stepped(model, seed, o.get("steps", 2), o.get("sparsity", 0.2))
        elif what == "in-domain":
            n, length = o.get("samples", 16), o.get("len", 128)
            g = torch.Generator().manual_seed(seed)
            starts = 4096 + torch.randint(0, len(ids) - 4096 - length, (n,), generator=g)
            windows = torch.stack([ids[int(a):int(a) + length] for a in starts])
            small = tuneless.fold(model, sparsity=0.2, seed=seed, repair="refit", data=windows)
        else:
            raise SystemExit(f"unknown experiment {what!r}")
        cpu = time.process_time() - cpu
        p = perplexity_of_ids(small, ids, 512, 2048, progress=False)
        print(json.dumps({"experiment": what, **o, "ppl": round(p, 2),
                          "x_dense": round(p / dense, 3), "cpu_s": round(cpu, 1),
                          "layer_sizes": small.tuneless_report.get("layer_sizes")
                          if what == "allocation" else None}), flush=True)
    return 0


def _sampled_once(model, seed, n):
    """The default fold (two steps) with the calibration tokens sampled once, from the
    original model, and reused by the second step."""
    import tuneless
    import tuneless.llm.fold as fold_module

    plain = fold_module.self_generated
    drawn = []

    def once(*args, **kwargs):
        if not drawn:
            drawn.append(plain(*args, **kwargs))
        return drawn[0]

    fold_module.self_generated = once
    try:
        return tuneless.fold(model, sparsity=0.2, seed=seed, calib_samples=n)
    finally:
        fold_module.self_generated = plain


def _with_bias_refit(model, seed):
    """The default fold with each down_proj refit as [W | b], the bias unpenalised (the
    ridge pulls W alone towards the folded weights); a second step adds to the first's b."""
    import tuneless
    import tuneless.llm.refit as refit_module

    plain_refit, plain_layer = refit_module.ridge_refit, refit_module.refit_layer
    owner = {}

    def with_bias(a, y, w, lam, weight=None):
        mod = owner.get(id(w))
        if mod is None:
            return plain_refit(a, y, w, lam, weight)
        a64, y64 = a.reshape(-1, a.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        ones = torch.ones(len(a64), 1, dtype=torch.float64)
        if weight is not None:
            root = weight.reshape(-1, 1).double().sqrt()
            a64, y64, ones = a64 * root, y64 * root, ones * root
        aug = torch.cat([a64, ones], 1)
        gram, k = aug.T @ aug, a64.shape[1]
        pen = torch.full((k + 1,), lam * float(gram[:k, :k].diagonal().mean()),
                         dtype=torch.float64)
        pen[k] = 0.0
        prior = torch.cat([w.T.double(), torch.zeros(1, w.shape[0], dtype=torch.float64)])
        sol = torch.linalg.solve(gram + torch.diag(pen), aug.T @ y64 + pen[:, None] * prior)
        b = sol[k].to(w.dtype)
        if mod.bias is None:
            mod.bias = torch.nn.Parameter(b.clone())
        else:
            mod.bias.data += b
        return sol[:k].T.to(w.dtype).contiguous()

    def layer(adapter, lo, ln, *args, **kwargs):
        down = adapter.projections(ln)["down"]
        owner[id(down.weight)] = down
        return plain_layer(adapter, lo, ln, *args, **kwargs)

    refit_module.ridge_refit, refit_module.refit_layer = with_bias, layer
    try:
        return tuneless.fold(model, sparsity=0.2, seed=seed)
    finally:
        refit_module.ridge_refit, refit_module.refit_layer = plain_refit, plain_layer


def _obs_stepped(model, seed, steps, sparsity):
    """Structured OBS (tuneless.prune(criterion="obs")) reaching its default plan's widths
    in `steps` prunes, each with its own self-generated text, statistics and repair on the
    model it starts from — the fold's `steps` applied to OBS."""
    import tuneless
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.fold import step_plans
    from tuneless.llm.plan import OBS_DEFAULTS, resolve_plan

    shapes = adapter_for(model).shapes(model)
    plans = resolve_plan(shapes, sparsity=sparsity, defaults=OBS_DEFAULTS)
    small = model
    for stage in step_plans(shapes, plans, steps):
        now = adapter_for(small).shapes(small)
        schedule = {i: (0.0, 1 - p.n_mlp / s.n_mlp) for i, (s, p) in enumerate(zip(now, stage))}
        small = tuneless.prune(small, criterion="obs", schedule=schedule, seed=seed)
    return small


def _stepped(model, seed, mode):
    """The controls of fold_llm(steps=2) (the "steps" experiment in the module doc)."""
    import tuneless
    from tuneless.llm import block_params
    from tuneless.llm.activation_stats import collect_stats
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.decide import fold_decisions
    from tuneless.llm.engine import reduce_llm
    from tuneless.llm.fold import _plans, stage_plans
    from tuneless.llm.refit import refit_consumers, self_generated

    def widths(m):
        return [s.n_mlp for s in adapter_for(m).shapes(m)]

    def to(frm, target):  # a schedule dict from one model's MLP widths to others
        return {i: (0.0, 1 - t / f) for i, (f, t) in enumerate(zip(frm, target)) if t < f}

    if mode == "resolve":
        first = tuneless.fold(model, sparsity=0.1, seed=seed)
        kept = block_params(first) / block_params(model)
        return tuneless.fold(first, sparsity=1 - 0.8 / kept, seed=seed)
    if mode == "widths":
        first = tuneless.fold(model, sparsity=0.1, seed=seed, repair="none")
        kept = block_params(first) / block_params(model)
        final = widths(tuneless.fold(first, sparsity=1 - 0.8 / kept, seed=seed, repair="none"))
        return tuneless.fold(model, schedule=to(widths(model), final), seed=seed)
    if mode not in ("anchor", "anchor-own"):
        raise SystemExit(f"unknown steps mode {mode!r}")
    adapter = adapter_for(model)
    plans = _plans(model, 0.2, None, None, None, "kv-groups")
    mid = stage_plans(adapter.shapes(model), plans, 0.5)
    # "anchor" (as first measured) reached the midpoint in fold_llm's default two steps;
    # "anchor-own" in one, as the default's first step does
    first = tuneless.fold(model, schedule=to(widths(model), [p.n_mlp for p in mid]), seed=seed,
                          **({"steps": 1} if mode == "anchor-own" else {}))
    if mode == "anchor":  # the original's samples: the first step's too
        calib = self_generated(model, None, 16, 128, seed)
    else:  # the first step's model samples, as the default's second step does
        calib = self_generated(first, None, 16, 128, seed)
    stats = collect_stats(first, calib)

    def decide(i, groups, shape, plan):
        return fold_decisions(adapter, first, groups, shape, plan, seed=seed + 1000 * i,
                              refine=False, stats=stats[i])  # as fold_llm's defaults

    second = reduce_llm(first, plans, decide, desc="fold")
    return refit_consumers(model, second, calib, lam=3.0)


def _refit_lambda(model, layer_ids, lams=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0)):
    from tuneless.decisions import merge
    from tuneless.llm.activation_stats import collect_stats
    from tuneless.llm.adapters import adapter_for, layer_graph, whitening
    from tuneless.llm.decide import kmeans_labels
    from tuneless.llm.refit import ridge_refit, self_generated

    calib, held = (self_generated(model, None, 16, 128, s) for s in (0, 99))
    stats = collect_stats(model, calib)
    ad = adapter_for(model)
    layers = ad.layers(model)

    def mlp_inputs(ids):
        xs = {}
        hooks = [ad.projections(layer)["gate"].register_forward_pre_hook(
            lambda _m, a, i=i: xs.__setitem__(i, a[0].reshape(-1, a[0].shape[-1])))
            for i, layer in enumerate(layers)]
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        return xs

    xs, xh = mlp_inputs(calib), mlp_inputs(held)
    _, per = layer_graph(ad, ad.shapes(model), "kv-groups")
    with torch.no_grad():
        for i in layer_ids:
            p = ad.projections(layers[i])
            g, u, d = p["gate"].weight, p["up"].weight, p["down"].weight
            y, yh = ((SILU(x @ g.T) * (x @ u.T)) @ d.T for x in (xs[i], xh[i]))
            k = g.shape[0] // 2
            feats = per[i].mlp.features(model, transform=whitening(stats[i], per[i].roles))
            m, onehot = merge(kmeans_labels(feats, k, seed=1000 * i, refine=False), k)
            h, hh = (SILU(x @ (m @ g).T) * (x @ (m @ u).T) for x in (xs[i], xh[i]))
            row = {"layer": i, "no refit": float((hh @ (d @ onehot).T - yh).pow(2).sum()
                                                  / yh.pow(2).sum())}
            for lam in lams:
                w = ridge_refit(h, y, d @ onehot, lam)
                row[f"lambda {lam}"] = float((hh @ w.T - yh).pow(2).sum() / yh.pow(2).sum())
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)


def _fold_on_activations(model, seed):
    from tuneless.decisions import merge
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.decide import kmeans_labels
    from tuneless.llm.engine import reduce_llm
    from tuneless.llm.fold import _plans, calibration_ids, repair_reduced

    ad = adapter_for(model)
    layers = ad.layers(model)
    calib = calibration_ids(model, "self", None, None, 16, 128, seed)
    acts = {}
    hooks = [ad.projections(layer)["down"].register_forward_pre_hook(
        lambda _m, a, i=i: acts.__setitem__(i, a[0].reshape(-1, a[0].shape[-1]).T.contiguous()))
        for i, layer in enumerate(layers)]
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for h in hooks:
        h.remove()

    def decide(i, groups, shape, plan):
        d = ad.projections(layers[i])["down"].weight
        return {gid: merge(kmeans_labels(acts[i] * d.norm(dim=0)[:, None], k,
                                         seed=seed + 1000 * i, refine=False), k)
                for gid, k in ad.kept(groups, shape, plan).items()}

    folded = reduce_llm(model, _plans(model, 0.2, None, None, None, "kv-groups"), decide,
                        desc="fold")
    return repair_reduced(model, folded, "self", calib=calib, refit_lambda=3.0)


def _with_producer_refit(model, seed, lam):
    import tuneless
    import tuneless.llm.refit as refit_module
    from tuneless.linalg import ridge_solve

    consumers_only = refit_module.refit_layer

    @torch.no_grad()
    def correct(linears, a_new, a_old):
        a = a_new.reshape(-1, a_new.shape[-1]).double()
        b = a_old.reshape(-1, a_old.shape[-1]).double()
        eye = torch.eye(a.shape[1], dtype=torch.float64)
        m = ridge_solve(a.T @ a, a.T @ b, lam, prior=eye)  # a_new · m ≈ a_old
        for lin in linears:
            lin.weight.copy_((lin.weight.double() @ m.T).to(lin.weight.dtype))

    @torch.no_grad()
    def refit_layer(adapter, lo, ln, h_old, h_new, kwargs, **options):
        pn = adapter.projections(ln)
        pre, post = adapter.norms
        correct([pn["q"], pn["k"], pn["v"]], getattr(ln, pre)(h_new), getattr(lo, pre)(h_old))
        _, seen_old = refit_module._run(lo, h_old, kwargs, {"mid": getattr(lo, post)})
        _, seen_new = refit_module._run(ln, h_new, kwargs, {"mid": getattr(ln, post)})
        correct([pn["gate"], pn["up"]], getattr(ln, post)(seen_new["mid"]),
                getattr(lo, post)(seen_old["mid"]))
        return consumers_only(adapter, lo, ln, h_old, h_new, kwargs, **options)

    refit_module.refit_layer = refit_layer
    try:
        return tuneless.fold(model, sparsity=0.2, seed=seed)
    finally:
        refit_module.refit_layer = consumers_only


def _with_up_fit(model, seed, rank, lam, target):
    import tuneless
    import tuneless.llm.fold as fold_module
    import tuneless.llm.refit as refit_module

    plain_decisions, consumers_only = fold_module.fold_decisions, refit_module.refit_layer
    assignments = []  # (the source's layer, U n×k)
    base = seed

    def fold_decisions(adapter, source, lg, shape, plan, *, seed=0, **options):
        out = plain_decisions(adapter, source, lg, shape, plan, seed=seed, **options)
        if lg.mlp.id in out:
            layer = adapter.layers(source)[(seed - base) // 1000]
            assignments.append((layer, out[lg.mlp.id][1]))
        return out

    def membership(lo):
        for layer, u in reversed(assignments):
            if layer is lo:
                return u
        raise AssertionError("no recorded clustering for a folded layer")

    @torch.no_grad()
    def refit_layer(adapter, lo, ln, h_old, h_new, kwargs, **options):
        if ln.mlp.down_proj.in_features < lo.mlp.down_proj.in_features:
            u = membership(lo)
            u = torch.as_tensor(u).double()
            mean = (u / u.sum(0)).T @ lo.mlp.gate_proj.weight.double()
            assert torch.allclose(mean.to(ln.mlp.gate_proj.weight.dtype),
                                  ln.mlp.gate_proj.weight, atol=1e-5), "channel order"
            _, old = refit_module._run(lo, h_old, kwargs, {"x": lo.mlp.gate_proj,
                                                           "a": lo.mlp.down_proj})
            _, new = refit_module._run(ln, h_new, kwargs, {"x": ln.mlp.gate_proj})
            _fit_up_rows(lo.mlp, ln.mlp, u, old["a"], new["x"], rank, lam, target)
        return consumers_only(adapter, lo, ln, h_old, h_new, kwargs, **options)

    fold_module.fold_decisions = fold_decisions
    refit_module.refit_layer = refit_layer
    try:
        return tuneless.fold(model, sparsity=0.2, seed=seed)
    finally:
        fold_module.fold_decisions = plain_decisions
        refit_module.refit_layer = consumers_only


@torch.no_grad()
def _fit_up_rows(mo, mn, u, a_old, x_new, rank, lam, target, chunk=64):
    """Re-solve mn.up_proj rows of clusters with ≥ 2 members (see `upfit`)."""
    d_old = mo.down_proj.weight.double()  # d × n
    u = torch.as_tensor(u).double()  # n × k
    d_c = d_old @ u  # d × k: summed columns
    if target == "project":
        beta = (d_old.T @ d_c * u).sum(1) / d_c.pow(2).sum(0)[u.argmax(1)]  # n
    else:  # plain mean of the members' activations
        beta = 1.0 / u.sum(0)[u.argmax(1)]
    a = a_old.reshape(-1, a_old.shape[-1]).double()
    t = (a * beta) @ u  # N × k targets
    x = x_new.reshape(-1, x_new.shape[-1]).double()
    sizes = u.sum(0)
    multi = torch.nonzero(sizes >= 2).flatten()
    if len(multi) == 0:
        return
    evals, evecs = torch.linalg.eigh(x.T @ x)
    p = evecs[:, -rank:]  # d × r
    z = x @ p  # N × r
    up = mn.up_proj.weight  # k × d
    gate = mn.act_fn(x @ mn.gate_proj.weight.double().T)  # N × k
    for lo in range(0, len(multi), chunk):
        idx = multi[lo:lo + chunk]
        s = gate[:, idx]  # N × c
        e = t[:, idx] - s * (x @ up[idx].double().T)  # residual target
        zs = z[None] * s.T[:, :, None]  # c × N × r
        g = zs.transpose(1, 2) @ zs  # c × r × r
        rhs = (zs * e.T[:, :, None]).sum(1)  # c × r
        ridge = lam * g.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12)
        g = g + ridge[:, None, None] * torch.eye(rank, dtype=g.dtype)
        delta = torch.linalg.solve(g, rhs[:, :, None])[:, :, 0]  # c × r
        up[idx] = (up[idx].double() + delta @ p.T).to(up.dtype)


@torch.no_grad()
def _balanced_mlps(model, mode):
    """A copy of `model` with each MLP channel's up row × α and down column ÷ α."""
    import copy

    if mode == "none":
        return model
    out = copy.deepcopy(model)
    for layer in out.model.layers:
        up, down = layer.mlp.up_proj.weight, layer.mlp.down_proj.weight
        nu, nd = up.norm(dim=1), down.norm(dim=0)
        a = (nd / nu).sqrt() if mode == "balance" else nu.mean() / nu
        up.mul_(a[:, None])
        down.div_(a[None, :])
    return out


def _with_merge_weights(model, seed, mode):
    import tuneless
    import tuneless.llm.fold as fold_module
    from tuneless.graph.groups import CONSUMER

    plain = fold_module.fold_decisions

    def fold_decisions(adapter, source, lg, shape, plan, *, stats=None, **options):
        out = plain(adapter, source, lg, shape, plan, stats=stats, **options)
        if stats is None or lg.mlp.id not in out:
            return out
        g = lg.mlp
        _, u = out[g.id]
        w = stats.mlp_rms.float().clamp(min=1e-12)
        if mode == "rmscol":
            for s in g.slots:
                if s.kind == CONSUMER:
                    w = w * s.channel_rows(source, g.n).float().reshape(g.n, -1).norm(dim=1)
        members = (torch.as_tensor(u).T != 0).float() * w[None, :]  # k × n
        out[g.id] = (members / members.sum(1, keepdim=True), u)
        return out

    fold_module.fold_decisions = fold_decisions
    try:
        return tuneless.fold(model, sparsity=0.2, seed=seed)
    finally:
        fold_module.fold_decisions = plain


def _with_first_weight(model, seed, sparsity):
    import tuneless
    import tuneless.llm.refit as refit_module

    plain = refit_module._refit_into

    def refit_into(lin, x, goal, weight, lam, skip):
        if skip and x.dim() == 3:
            rows = x.float().pow(2).sum(-1)  # (batch, seq)
            w = torch.ones_like(rows)
            w[:, :skip] = (rows[:, skip:].median(1).values[:, None]
                           / rows[:, :skip].clamp(min=1e-30)).clamp(max=1.0)
            weight = w if weight is None else weight * w
        return plain(lin, x, goal, weight, lam, 0)

    refit_module._refit_into = refit_into
    try:
        return tuneless.fold(model, sparsity=sparsity, seed=seed)
    finally:
        refit_module._refit_into = plain


def _with_representatives(model, seed, mode):
    import tuneless
    import tuneless.llm.fold as fold_module
    from tuneless.decisions import Merge

    plain_decisions, plain_stats = fold_module.fold_decisions, fold_module.collect_stats
    inputs: dict[str, torch.Tensor] = {}  # gate_proj name -> its inputs (tokens × hidden)

    def collect_stats(m, ids, *, skip=0, **kw):
        inputs.clear()
        hooks = []
        for i, layer in enumerate(m.model.layers):
            name = f"model.layers.{i}.mlp.gate_proj"

            def grab(_mod, args, name=name):
                x = args[0][:, skip:].reshape(-1, args[0].shape[-1]).float()
                inputs[name] = torch.cat([inputs[name], x]) if name in inputs else x
            hooks.append(layer.mlp.gate_proj.register_forward_pre_hook(grab))
        try:
            with torch.no_grad():
                for start in range(0, len(ids), 16):
                    m(input_ids=ids[start:start + 16], use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        return plain_stats(m, ids, skip=skip, **kw)

    def fold_decisions(adapter, source, lg, shape, plan, **options):
        out = plain_decisions(adapter, source, lg, shape, plan, **options)
        g = lg.mlp
        if g.id not in out:
            return out
        dec = out[g.id]
        labels = dec.labels if isinstance(dec, Merge) else torch.as_tensor(dec[1]).argmax(1)
        gate_name = next(s.module for s in g.slots if s.module.endswith("gate_proj"))
        mlp = source.get_submodule(gate_name.rsplit(".", 1)[0])
        x = inputs[gate_name]
        wg, wu = mlp.gate_proj.weight.float(), mlp.up_proj.weight.float()
        wd = mlp.down_proj.weight.float()
        a = mlp.act_fn(x @ wg.T) * (x @ wu.T)  # tokens × n
        k = int(labels.max()) + 1
        m_map = torch.zeros(k, g.n)
        u_map = torch.zeros(g.n, k)
        u_map[torch.arange(g.n), labels] = 1.0
        for c in range(k):
            members = torch.nonzero(labels == c).flatten()
            if len(members) == 1:
                m_map[c, members] = 1.0
                continue
            y = a[:, members] @ wd[:, members].T  # the cluster's share of the output
            cands = [] if mode == "members" else [
                mlp.act_fn(x @ wg[members].mean(0)) * (x @ wu[members].mean(0))]
            cands += [a[:, j] for j in members]
            score = [float((y.T @ v).pow(2).sum() / v.pow(2).sum().clamp(min=1e-30))
                     for v in cands]
            best = max(range(len(cands)), key=score.__getitem__)
            if mode != "members" and best == 0:
                m_map[c, members] = 1.0 / len(members)
            else:
                m_map[c, members[best - (mode != "members")]] = 1.0
        out[g.id] = (m_map, u_map)
        return out

    fold_module.fold_decisions, fold_module.collect_stats = fold_decisions, collect_stats
    try:
        return tuneless.fold(model, sparsity=0.2, seed=seed)
    finally:
        fold_module.fold_decisions, fold_module.collect_stats = plain_decisions, plain_stats


def _selection_proxy(model, ids, dense, seed, candidates, held_out, repair="refit"):
    """Is a data-free score good enough to choose between folds? Each candidate (fold options)
    is folded with the self-repair on the same 16×128 self-generated tokens (repair="self":
    the default fold itself, which samples its own tokens at each step); printed: its
    perplexity on `held_out` other self-generated sequences (no data) and on WikiText-2."""
    import tuneless
    from tuneless.llm.perplexity import perplexity_of_ids
    from tuneless.llm.refit import self_generated

    calib = self_generated(model, None, 16, 128, seed) if repair == "refit" else None
    other = self_generated(model, None, held_out, 128, seed + 7919)
    base = perplexity_of_ids(model, other.flatten(), 128, progress=False)
    for c in candidates:
        cpu = time.process_time()
        given = {"repair": "refit", "data": calib} if repair == "refit" else {}
        small = tuneless.fold(model, **{"sparsity": 0.2, "seed": seed, **given, **c})
        cpu = time.process_time() - cpu
        self_ppl = perplexity_of_ids(small, other.flatten(), 128, progress=False)
        p = perplexity_of_ids(small, ids, 512, 2048, progress=False)
        print(json.dumps({"experiment": "select", "calib_seed": seed, **c,
                          "self_ppl": round(self_ppl, 3), "dense_self_ppl": round(base, 3),
                          "ppl": round(p, 2), "x_dense": round(p / dense, 3),
                          "cpu_s": round(cpu, 1)}), flush=True)


def _obs_prune(model, seed, mode, allocation, damp=0.01, block=8, cap=0.75, sparsity=0.2):
    """Structured OBS (SlimGPT / ZipLM-style) on the MLP channels, data-free on the
    self-generated tokens, then the default repair. mode "select": prune the removed
    channels; "centers": fold each removed channel into the kept channel whose activation
    correlates most with it (a fold whose cluster centres OBS chose); "merge" /
    "merge-prune": clusters chosen by greedy OBS over column ties (obs_merge_labels);
    "kmeans": the default fold (only the allocation changes). allocation: "paper-mlp" |
    "inner-mlp" | "global" (every layer's OBS costs divided by the energy of the residual
    stream it writes to, one ranking over all layers, at most `cap` of a layer's
    channels)."""
    from tuneless.decisions import merge, selection
    from tuneless.llm import block_params
    from tuneless.llm.activation_stats import _moments, collect_stats
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.decide import fold_decisions
    from tuneless.llm.engine import reduce_llm
    from tuneless.llm.fold import _plans, calibration_ids, repair_reduced
    from tuneless.llm.obs import obs_steps

    ad = adapter_for(model)
    layers = ad.layers(model)
    calib = calibration_ids(model, "self", None, None, 16, 128, seed)
    full = {"q": False, "gate": False, "o": False, "down": True}
    moments = [m["down"].mean() for m in _moments(model, calib, full, 16, False)]
    downs = [ad.projections(layer)["down"].weight.detach() for layer in layers]
    n = moments[0].shape[0]
    limit = int(cap * n)
    if allocation != "global":
        plans = _plans(model, sparsity, allocation, None, None, "kv-groups")
        limits = [n - p.n_mlp for p in plans]
    else:
        limits = [limit] * len(layers)
    columns = torch.arange(n).reshape(n, 1)

    def order_and_costs(h, d, m):  # each removed channel's share of its step's added error
        steps = list(obs_steps(h, d, columns, m, block=block, damp=damp))
        return ([u for chosen, _ in steps for u in chosen],
                [cost / len(chosen) for chosen, cost in steps for _ in chosen])

    orders = ([([], [])] * len(layers) if mode in ("merge", "merge-prune") else
              [order_and_costs(h, d, m) for h, d, m in zip(moments, downs, limits)])
    if allocation == "global":
        energy = {}
        hooks = [layer.register_forward_hook(
            lambda _m, _a, out, i=i: energy.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).double().pow(2).sum(-1).mean()))
            for i, layer in enumerate(layers)]
        with torch.no_grad():
            model(input_ids=calib, use_cache=False)
        for hk in hooks:
            hk.remove()
        hidden = downs[0].shape[0]
        total = round(sparsity * block_params(model) / (3 * hidden))
        ranked = []
        for i, (_, costs) in enumerate(orders):
            c = torch.tensor(costs).cummax(0).values / float(energy[i])
            ranked += [(float(x), i) for x in c]
        ranked.sort()
        removed = [0] * len(layers)
        for _, i in ranked[:total]:
            removed[i] += 1
        schedule = {i: (0.0, r / n) for i, r in enumerate(removed)}
        plans = _plans(model, None, schedule, None, None, "kv-groups")
        print(json.dumps({"removed": removed}), flush=True)
    stats = collect_stats(model, calib) if mode == "kmeans" else None

    def decide(i, groups, shape, plan):
        k = plan.n_mlp
        if mode == "kmeans":
            return fold_decisions(ad, model, groups, shape, plan, seed=seed + 1000 * i,
                                  refine=False, stats=stats[i])
        order = orders[i][0]
        if mode not in ("merge", "merge-prune") and n - k > len(order):
            raise SystemExit(f"layer {i}: the plan removes more than the cap")
        gone = torch.tensor(order[:n - k], dtype=torch.long)
        keep = torch.ones(n, dtype=torch.bool)
        keep[gone] = False
        kept = keep.nonzero().flatten()
        if mode == "select":
            return {groups.mlp.id: selection(kept, n)}
        if mode in ("merge", "merge-prune"):
            labels = obs_merge_labels(moments[i], downs[i], k, damp=damp, step=block,
                                      prune=mode == "merge-prune")
            return {groups.mlp.id: _merge_or_drop(labels, k)}
        h = moments[i]
        dg = h.diagonal().clamp(min=1e-30).sqrt()
        corr = h / dg[:, None] / dg[None, :]
        labels = torch.empty(n, dtype=torch.long)
        labels[kept] = torch.arange(len(kept))
        labels[gone] = corr[gone][:, kept].argmax(1)
        return {groups.mlp.id: merge(labels, len(kept))}

    small = reduce_llm(model, plans, decide, desc="obs")
    return repair_reduced(model, small, "self", calib=calib, refit_lambda=3.0)


@torch.no_grad()
def obs_merge_labels(h, w, k, *, damp=0.01, step=8, prune=False):
    """Greedy OBS over merges: tying two consumer columns (w_i = w_j, the constraint a
    merge puts on a least-squares refit if the merged channel carries a_i + a_j) costs
    ||W_i - W_j||^2 / (H^-1_ii + H^-1_jj - 2 H^-1_ij); the cheapest disjoint pairs of
    cluster representatives are tied `step` at a time, W and H^-1 updated as OBS does,
    until k clusters remain. prune: dropping a cluster (w_i = 0, cost ||W_i||^2 / H^-1_ii)
    competes with the merges; its label is -1. Returns (n,) labels."""
    n = h.shape[0]
    h = h.double()
    h = h + damp * float(h.diagonal().mean()) * torch.eye(n, dtype=h.dtype)
    hinv, w = torch.linalg.inv(h), w.double().clone()
    g = w.T @ w
    parent = torch.arange(n)
    rep = torch.ones(n, dtype=torch.bool)
    dropped = torch.zeros(n, dtype=torch.bool)
    left = n
    while left > k:
        idx = rep.nonzero().flatten()
        hi, gi = hinv[idx][:, idx], g[idx][:, idx]
        dh, dg = hi.diagonal(), gi.diagonal()
        denom = (dh[:, None] + dh[None, :] - 2 * hi).clamp(min=1e-30)
        cost = (dg[:, None] + dg[None, :] - 2 * gi) / denom
        cost.fill_diagonal_(float("inf"))
        cost = torch.triu(cost) + torch.tril(torch.full_like(cost, float("inf")))
        m = min(step, left - k)
        flat = torch.topk(cost.flatten(), min(cost.numel(), 8 * m), largest=False)
        cand = [(float(c), int(f) // len(idx), int(f) % len(idx))
                for c, f in zip(flat.values, flat.indices)]
        if prune:
            pc = dg / dh.clamp(min=1e-30)
            top = torch.topk(pc, min(len(idx), 4 * m), largest=False)
            cand += [(float(c), int(a), -1) for c, a in zip(top.values, top.indices)]
            cand.sort()
        used, chosen = set(), []
        for _c, a, b in cand:
            if a in used or b in used:
                continue
            chosen.append((int(idx[a]), -1 if b < 0 else int(idx[b])))
            used.update((a, b) if b >= 0 else (a,))
            if len(chosen) == m:
                break
        cons = torch.zeros(n, len(chosen), dtype=h.dtype)
        for j, (a, b) in enumerate(chosen):
            cons[a, j] = 1.0
            if b >= 0:
                cons[b, j] = -1.0
        hc = hinv @ cons
        s_inv = torch.linalg.inv(cons.T @ hc)
        wc = w @ cons
        b_mat = s_inv @ hc.T  # (m, n)
        wta = w.T @ wc  # (n, m)
        g = g - wta @ b_mat - b_mat.T @ wta.T + b_mat.T @ (wc.T @ wc) @ b_mat
        w = w - wc @ b_mat
        hinv = hinv - hc @ s_inv @ hc.T
        for a, b in chosen:
            if b < 0:
                dropped[a] = True
                rep[a] = False
            else:
                rep[b] = False
                parent[b] = a
        left -= len(chosen)
    root = parent.clone()
    while True:
        nxt = parent[root]
        if torch.equal(nxt, root):
            break
        root = nxt
    alive = rep.nonzero().flatten()
    index = torch.full((n,), -1, dtype=torch.long)
    index[alive] = torch.arange(len(alive))
    labels = index[root]
    labels[dropped[root]] = -1
    return labels


def _merge_or_drop(labels, k):
    """(M, U): clusters with labels >= 0 merged (mean producer rows, summed consumers),
    label -1 dropped."""
    n = len(labels)
    u = torch.zeros(n, k)
    keep = labels >= 0
    u[keep.nonzero().flatten(), labels[keep]] = 1.0
    m = u.T / u.sum(0).clamp(min=1)[:, None]
    return m, u


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
