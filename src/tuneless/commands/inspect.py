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
        status = "reducible" if g.reducible else "fixed" if g.fixed else "no producer/consumer"
        rows.append({"group": g.id, "channels": g.n, "status": status, "producers": shown or "-",
                     "why fixed": "; ".join(g.reasons) if g.fixed else ""})
    return rows


def run(args: argparse.Namespace) -> int:
    from tuneless.evaluate import count_params
    from tuneless.graph import find_groups
    from tuneless.report import render_table

    model, x = load_from_args(args)
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
