"""Run trial models from the first layer they change.

The sensitivity allocation measures hundreds of trial models that differ from the
reference in one channel group. Every layer before the group's first one computes what
the reference computed, so its outputs on the probes are computed once per group and
kept; each trial runs only the rest of the traced graph (torch.fx), with the trial's own
modules.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from tuneless.modes import evaluating


class _On(fx.Interpreter):
    """Interprets the reference's graph with the modules and tensors of another model of
    the same structure (a trial: the same module names, some tensors rewritten)."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.model = model

    def fetch_attr(self, target: str):
        obj = self.model
        for atom in target.split("."):
            obj = getattr(obj, atom)
        return obj


def _touches(target: str, changed: set[str]) -> bool:
    """Whether a graph target (module or attribute path) is, holds or sits in a changed
    module."""
    return any(target == c or target.startswith(c + ".") or c.startswith(target + ".")
               or (c == "" and target) for c in changed)


class SuffixRunner:
    """run(model, changed) == model(probe) for a model that differs from `reference` only
    in the modules named in `changed`, computing only the graph from the first node that
    uses one of them (the prefix's values are reused while calls name the same start)."""

    def __init__(self, reference: nn.Module, probe: torch.Tensor) -> None:
        from tuneless.graph.trace import trace

        self.reference, self.probe = reference, probe
        self.gm = trace(reference, probe[:1])
        self.nodes = list(self.gm.graph.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((index[u] for u in n.users), default=index[n])
                         for n in self.nodes}
        self.frees: dict[int, list[fx.Node]] = {}
        for n, last in self.last_use.items():
            self.frees.setdefault(last, []).append(n)
        self._start: int | None = None
        self._env: dict[fx.Node, object] = {}

    def start_of(self, changed: set[str]) -> int:
        """Index of the first node that calls or reads a changed module."""
        for i, n in enumerate(self.nodes):
            if n.op in ("call_module", "get_attr") and _touches(str(n.target), changed):
                return i
        return 0  # nothing found: run everything

    @torch.no_grad()
    def _prefix(self, start: int) -> dict:
        """Values of the nodes before `start` that later nodes read (the last start's only:
        calls come group by group, and a prefix can be as large as the activations). A start
        after the last one continues from it, so calls in order of their starts walk the
        reference once in all."""
        if self._start != start:
            begin, env = 0, {}
            if self._start is not None and self._start < start:
                begin, env = self._start, self._env  # trials copy it: never changed by them
            self._env = {}  # the previous group's values are released first
            with evaluating(self.reference):
                self._env = self._walk(fx.Interpreter(self.gm), begin, start, env)
            self._start = start
        return self._env

    def _walk(self, interp: fx.Interpreter, begin: int, end: int, env: dict):
        """Run nodes[begin:end] in `interp` over `env`, freeing each value after its last
        use; returns env, or the output's value when the output is reached."""
        interp.env = env
        interp.args_iter = iter([self.probe])
        for i in range(begin, end):
            n = self.nodes[i]
            value = interp.run_node(n)
            if n.op == "output":
                return value
            env[n] = value
            for done in self.frees.get(i, ()):
                env.pop(done, None)
        return env

    @torch.no_grad()
    def run(self, model: nn.Module, changed: set[str]):
        start = self.start_of(changed)
        env = dict(self._prefix(start))
        with evaluating(model):
            return self._walk(_On(self.gm, model), start, len(self.nodes), env)
