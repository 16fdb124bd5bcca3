"""CAP (Correlation-Aware Pruning) and its neighbours, WoodFisher and FastCAP: unstructured (or N:M) pruning with
second-order information from a block-diagonal empirical Fisher.

The folder is a map of the algorithm:

* ``config.py``: ``CAPConfig`` ("cap"), ``WoodFisherConfig`` ("woodfisher"), ``FastCAPConfig`` ("fastcap");
* ``../../observers/fisher.py``: masked mini-batch gradients folded into Fisher blocks, an observer of the gradient
  engine ``../../observers/gradients.py`` (losses, dtypes, data-parallel sharding and all-reduce);
* ``inverse.py``: batched Cholesky inverses with a damped fallback;
* ``elimination.py``: CAP's exact greedy OBS elimination inside every block, and its replay;
* ``selection.py``: one global threshold on cumulative block loss, per-layer counts, N:M groups;
* ``woodfisher.py``: saliencies once, summed OBS update;
* ``fastcap.py``: one shared B×B Fisher per layer, SparseGPT-style column-sequential update;
* ``pruner.py``: the three pruners that wire these together.
"""

from ...configuration import register_method
from .config import BlockFisherConfig, CAPConfig, FastCAPConfig, GradientFisherConfig, WoodFisherConfig

register_method("cap", CAPConfig, ".pruner:CAPPruner")
register_method("woodfisher", WoodFisherConfig, ".pruner:WoodFisherPruner")
register_method("fastcap", FastCAPConfig, ".pruner:FastCAPPruner")

__all__ = ["BlockFisherConfig", "CAPConfig", "FastCAPConfig", "GradientFisherConfig", "WoodFisherConfig"]
