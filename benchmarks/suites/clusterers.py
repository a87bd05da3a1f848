"""Clustering rules measured against the default but not (yet) in the library.

Importing this module registers them under names `tuneless.fold(cluster=...)` accepts, so
every benchmark measures the same rule under the same name.
"""

from __future__ import annotations

from functools import partial

from tuneless.cluster import CLUSTERERS, shallow_ward

# cluster="auto"'s rule (Ward + Hartigan on a shallow cut of a wide group) on any width
CLUSTERERS.setdefault("shallow-all", partial(shallow_ward, min_width=0))
# Ward + Hartigan on every group of at least 128 / 256 channels, at any cut depth (the
# paper's code clusters by Ward; Ward + Hartigan won on the VGG and the MLP, whose wide
# groups these are, and lost on the ResNets' narrow ones: docs/folding.md)
CLUSTERERS.setdefault("wide128", partial(shallow_ward, min_width=128, shallow_cut=0.0))
CLUSTERERS.setdefault("wide256", partial(shallow_ward, min_width=256, shallow_cut=0.0))
# cluster="auto"'s rule with other cut thresholds: Ward + Hartigan on groups of >= 256
# channels that keep >= 70% ("cut70": auto until it was measured against the others) /
# 60% ("cut60": auto since) / 50% of them (the VGG's paper point r = 0.3 keeps 69.9% of a
# 256-wide group, just outside the 70% rule)
CLUSTERERS.setdefault("cut70", partial(shallow_ward, shallow_cut=0.7))
CLUSTERERS.setdefault("cut60", partial(shallow_ward, shallow_cut=0.6))
CLUSTERERS.setdefault("cut50", partial(shallow_ward, shallow_cut=0.5))
