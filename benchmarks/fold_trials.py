"""How many trial folds a sensitivity allocation measures, how long the default fold takes,
and a hash of the folded weights (so two versions of the code can be shown to give the
same model): the default `tuneless.fold` at each sparsity, one thread. Imports the
`tuneless` on PYTHONPATH (else the installed one), so one command times two checkouts:

    PYTHONPATH=<checkout>/src python benchmarks/fold_trials.py \\
        models/resnet56-avg-cifar10.pt:0.1,0.5 resnet18:0.3 mobilenet_v2:0.3

A spec is a checkpoint path (its own input size, 8 random inputs) or a torchvision model
name (random weights, seed 0, one 224-px input), then `:` and sparsities.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # benchmarks.suites, last
    import torchvision

    import tuneless
    from benchmarks.suites.fold_bench import load_any
    from tuneless.allocation import OutputDamage
    from tuneless.progress import set_progress

    set_progress(False)
    torch.set_num_threads(1)
    trials = [0]
    measure = OutputDamage.__call__

    def counted(self, model, changed=None):
        trials[0] += 1
        return measure(self, model, changed)

    OutputDamage.__call__ = counted
    for spec in argv:
        name, points = spec.rsplit(":", 1)
        gen = torch.Generator().manual_seed(0)
        if name.endswith(".pt"):
            model, _arch, ds = load_any(name)
            shape = (3, 32, 32) if ds == "cifar10" else (1, 28, 28)
            x = torch.randn(8, *shape, generator=gen)
        else:
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)().eval()
            x = torch.randn(1, 3, 224, 224, generator=gen)
        for sparsity in (float(p) for p in points.split(",")):
            trials[0] = 0
            start = time.perf_counter()
            small = tuneless.fold(model, sparsity=sparsity, example_inputs=x)
            seconds = time.perf_counter() - start
            digest = hashlib.sha256()
            for key, value in small.state_dict().items():
                digest.update(key.encode())
                digest.update(value.detach().contiguous().numpy().tobytes())
            print(json.dumps({"model": name, "sparsity": sparsity, "trials": trials[0],
                              "seconds": round(seconds, 2),
                              "weights_sha256": digest.hexdigest()[:16],
                              "tuneless": str(Path(tuneless.__file__).parent)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
