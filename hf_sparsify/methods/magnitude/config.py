"""Configuration of magnitude pruning."""

from __future__ import annotations

from dataclasses import dataclass

from ...configuration import PruningConfig, PruningConfigError, parse_nm

SPARSITY_DISTRIBUTIONS = ("uniform", "global")


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
    ```
    """

    sparsity: float = 0.5
    sparsity_distribution: str = "uniform"
    mask_structure: str = "unstructured"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_fraction("sparsity", self.sparsity)
        self._check_choice("sparsity_distribution", self.sparsity_distribution, SPARSITY_DISTRIBUTIONS)
        self.nm = check_mask_structure(self.mask_structure, self.sparsity)


def check_mask_structure(mask_structure: str, sparsity: float) -> tuple[int, int] | None:
    """Validate ``mask_structure`` against ``sparsity``; returns ``(N, M)`` or ``None`` for unstructured."""
    if mask_structure == "unstructured":
        return None
    n, m = parse_nm(mask_structure)
    implied = 1 - n / m
    if abs(sparsity - implied) > 1e-9:
        raise PruningConfigError(
            f"mask_structure={mask_structure!r} keeps {n} of every {m} weights, i.e. sparsity {implied:g}; "
            f"sparsity={sparsity} cannot be reached with it. Set sparsity={implied:g} or use mask_structure='unstructured'."
        )
    return n, m
