"""Configuration of magnitude pruning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...configuration import Citation, PruningConfig, check_mask_structure

SPARSITY_DISTRIBUTIONS = ("uniform", "global")

CITATION = Citation(
    "magnitude pruning",
    """@inproceedings{han2015learning,
  title     = {Learning both Weights and Connections for Efficient Neural Networks},
  author    = {Han, Song and Pool, Jeff and Tran, John and Dally, William J.},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2015},
  eprint    = {1506.02626},
  archivePrefix = {arXiv}
}

@article{zhu2017prune,
  title   = {To prune, or not to prune: exploring the efficacy of pruning for model compression},
  author  = {Zhu, Michael and Gupta, Suyog},
  journal = {arXiv preprint arXiv:1710.01878},
  year    = {2017}
}""",
)


@dataclass(kw_only=True)
class MagnitudeConfig(PruningConfig):
    """Magnitude pruning: remove the weights of smallest absolute value.

    Args:
        sparsity: fraction of the targeted weights set to zero, in [0, 1).
        sparsity_distribution: ``"uniform"`` prunes every targeted layer to ``sparsity``; ``"global"`` ranks the
            magnitudes of all targeted layers together, so layers end up with different sparsities.
        mask_structure: ``"unstructured"``, or ``"N:M"`` such as ``"2:4"``: at most N weights kept in every group
            of M consecutive weights along the input dimension. N:M fixes the sparsity at ``1 - N/M``.

    Example:

    ```python
    >>> import hf_sparsify
    >>> config = hf_sparsify.MagnitudeConfig(sparsity=0.5, sparsity_distribution="global")
    >>> pruned = hf_sparsify.prune(model, config)
    >>> round(hf_sparsify.sparsity_report(pruned).sparsity, 2)
    0.5
    ```
    """

    citation: ClassVar[Citation] = CITATION
    demo_settings: ClassVar[dict[str, Any]] = {"sparsity": 0.5, "sparsity_distribution": "global"}
    quick_settings: ClassVar[dict[str, Any]] = {"sparsity": 0.5}

    sparsity: float = field(default=0.5, metadata={"help": "fraction of the targeted weights set to zero, in [0, 1)"})
    sparsity_distribution: str = field(
        default="uniform",
        metadata={"help": "'uniform': every targeted layer reaches the sparsity; 'global': one magnitude ranking across all targeted layers"},
    )
    mask_structure: str = field(
        default="unstructured",
        metadata={"help": "'unstructured', or 'N:M' such as '2:4': at most N weights kept in every M consecutive weights along the input dimension (fixes sparsity = 1 - N/M)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_fraction("sparsity", self.sparsity)
        self._check_choice("sparsity_distribution", self.sparsity_distribution, SPARSITY_DISTRIBUTIONS)
        self.nm = check_mask_structure(self.mask_structure, self.sparsity)

    def nm_pattern(self) -> tuple[int, int] | None:
        return self.nm
