"""`tuneless inspect MODEL`: the channel groups, their sizes, and why some are fixed."""

from __future__ import annotations

import argparse

from tuneless.commands.model_args import add_model_arguments, load_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show channel groups and which channels are fixed (why)")
    add_model_arguments(p)


def group_rows(graph) -> list[dict]:
    rows = []
    for g in graph:
        producers = sorted({s.module for s in g.producers})
        shown = ", ".join(producers[:2]) + (f" +{len(producers) - 2}" if len(producers) > 2 else "")
        status = ("reducible" + (f" in {g.blocks} blocks" if g.blocks > 1 else "")
                  if g.reducible else "fixed" if g.fixed else "no producer/consumer")
        rows.append({"group": g.id, "channels": g.n, "status": status, "producers": shown or "-",
                     "why fixed": "; ".join(g.reasons) if g.fixed else ""})
    return rows


def llm_rows(model) -> list[dict]:
    """Per decoder layer: its sizes and block parameters (tuneless.llm.adapters)."""
    from tuneless.llm.adapters import adapter_for

    adapter = adapter_for(model)
    rows = []
    for i, (layer, s) in enumerate(zip(adapter.layers(model), adapter.shapes(model))):
        rows.append({"layer": i, "query heads": s.n_q, "kv heads": s.n_kv,
                     "head dim": s.head_dim, "MLP channels": s.n_mlp,
                     "parameters": sum(p.numel() for p in layer.parameters())})
    return rows


def inspect_llm(args: argparse.Namespace) -> int:
    """A language model: its family, per-layer sizes and what folding can merge."""
    from tuneless.evaluate import count_params
    from tuneless.llm import block_params
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.source import load_llm
    from tuneless.report import render_table

    model, _tok = load_llm(args.model, trust_code=args.trust_code)
    adapter = adapter_for(model)  # an unsupported family: one line naming the supported ones
    s = adapter.shapes(model)[0]
    print(f"{type(model).__name__} (family {adapter.family}): {count_params(model):,} "
          f"parameters, {block_params(model):,} in {len(adapter.layers(model))} decoder layers")
    print(render_table(llm_rows(model)))
    rows = "gate/up" if adapter.gated else "input"
    heads = (f" and, with gqa='kv-groups', whole kv groups ({s.group} query heads each); with "
             "gqa='query-heads', query heads inside each kv group" if adapter.heads_foldable
             else "; heads stay (this family's head_dim is hidden_size / heads)")
    print(f"foldable per layer: MLP channels ({rows} rows merge, down columns sum){heads}. "
          f"The residual width ({s.hidden}), embeddings, norms and the vocabulary head stay.")
    return 0


def run(args: argparse.Namespace) -> int:
    from tuneless.evaluate import count_params
    from tuneless.graph import find_groups
    from tuneless.llm.source import is_llm_source, local_source
    from tuneless.materialize import materialize_weights
    from tuneless.report import render_table

    args.model = local_source(args.model)  # a Hub id: its folder, then routed by type

    if is_llm_source(args.model):
        return inspect_llm(args)
    model, x = load_from_args(args)
    model = materialize_weights(model, x)  # the groups fold and prune see
    graph = find_groups(model, x)
    print(f"{type(model).__name__}: {count_params(model):,} parameters, input "
          f"{tuple(x.shape[1:])}")
    print(render_table(group_rows(graph)))
    red = graph.reducible
    print(f"{len(graph)} groups: {len(red)} reducible ({sum(g.n for g in red):,} channels), "
          f"{len(graph.fixed)} fixed ({sum(g.n for g in graph.fixed):,} channels)")
    if not red:
        print("nothing to reduce: every channel group is fixed (see 'why fixed')")
    return 0
