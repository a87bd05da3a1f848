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

# the prefixes' values kept for later calls that start there (the allocation measures most
# groups' deeper trials only when its greedy gets there, out of the walk's order); the
# latest prefix is always kept, whatever its size
PREFIX_BYTES = 256 << 20


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


def _copied(env: dict) -> dict:
    """A prefix's values, tensors cloned: the nodes after it may write into their inputs
    (`x.add_(...)`, ReLU(inplace=True)), and a prefix serves many walks."""
    return {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in env.items()}


def _bytes(env: dict) -> int:
    """The tensor bytes a prefix holds."""
    return sum(v.element_size() * v.nelement() for v in env.values()
               if isinstance(v, torch.Tensor))


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
        self._envs: dict[int, dict[fx.Node, object]] = {}  # by start, least recent first

    def start_of(self, changed: set[str]) -> int:
        """Index of the first node that calls or reads a changed module."""
        for i, n in enumerate(self.nodes):
            if n.op in ("call_module", "get_attr") and _touches(str(n.target), changed):
                return i
        return 0  # nothing found: run everything

    @torch.no_grad()
    def _prefix(self, start: int) -> dict:
        """Values of the nodes before `start` that later nodes read. A start after a kept one
        continues from the nearest, so calls in order of their starts walk the reference
        once in all; prefixes are kept while they fit PREFIX_BYTES (a prefix can be as large
        as the activations), least recently used dropped first."""
        if start in self._envs:
            self._envs[start] = self._envs.pop(start)
            return self._envs[start]
        begin, env = 0, {}
        earlier = [s for s in self._envs if s < start]
        if earlier:
            begin = max(earlier)
            env = _copied(self._envs[begin])
        with evaluating(self.reference):
            env = self._walk(fx.Interpreter(self.gm), begin, start, env)
        self._envs[start] = env
        while len(self._envs) > 1 and sum(map(_bytes, self._envs.values())) > PREFIX_BYTES:
            del self._envs[next(iter(self._envs))]
        return env

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
        env = _copied(self._prefix(start))  # an in-place op after the start must not reach it
        with evaluating(model):
            return self._walk(_On(self.gm, model), start, len(self.nodes), env)
