"""The streamed fold against the in-memory fold on a tiny random model of every family of
the adapter contract: each saved in shards, folded layer by layer (`fold_checkpoint`,
half the MLP channels and, where heads fold, half the kv groups; the least-squares repair
on fixed token ids, exact k-means settings) and in memory (`fold_llm`, same options);
prints the largest logit difference per family, or the one-line error.

    python benchmarks/stream_families.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from tests.llm.test_adapter_contract import FAMILIES, _config
    from tuneless.errors import TunelessError
    from tuneless.llm import fold_checkpoint, fold_llm, load_folded
    from tuneless.llm.adapters import adapter_for_config

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    print("| family | head ratio | max abs logit difference, streamed vs in memory |")
    print("|---|---|---|")
    equal = 0
    for family in FAMILIES:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, cls = _config(family, layers=3)
            torch.manual_seed(0)
            model = cls(cfg).eval()
            model.save_pretrained(Path(tmp) / "src", max_shard_size="60KB")
            ratio = 0.5 if adapter_for_config(cfg).heads_foldable else 0.0
            opts = dict(head_ratio=ratio, mlp_ratio=0.5, repair="refit", data=calib)
            try:
                out = fold_checkpoint(Path(tmp) / "src", Path(tmp) / "dst", kmeans_dim=None,
                                      progress=False, **opts)
            except TunelessError as exc:
                print(f"| {family} | {ratio} | refused: {exc} |", flush=True)
                continue
            want = fold_llm(model, **opts)
            with torch.no_grad():
                diff = float((load_folded(out)(calib[:2]).logits
                              - want(calib[:2]).logits).abs().max())
            equal += diff <= 1e-5
            print(f"| {family} | {ratio} | {diff:.1e} |", flush=True)
    print(f"\n{equal} of {len(FAMILIES)} families: the streamed fold equals the in-memory one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
