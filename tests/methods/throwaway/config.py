"""Configuration of the throwaway method: random unstructured pruning, seeded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from hf_sparsify.configuration import Citation, PruningConfig


@dataclass(kw_only=True)
class RandomConfig(PruningConfig):
    """Remove a random ``sparsity`` fraction of every targeted layer's weights (a test method; it reads labelled
    calibration batches only to prove that the data reaches it)."""

    citation: ClassVar[Citation] = Citation("random pruning (a test method)", "@misc{throwaway2026,\n  title = {Random pruning},\n  year = {2026}\n}")
    demo_settings: ClassVar[dict[str, Any]] = {"sparsity": 0.3}
    quick_settings: ClassVar[dict[str, Any]] = {"sparsity": 0.3}

    sparsity: float = field(default=0.5, metadata={"help": "fraction of each targeted layer's weights removed at random"})
    reads_batches: int = field(default=1, metadata={"help": "calibration batches read (their labels are checked)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_fraction("sparsity", self.sparsity)

    def needs_labels(self) -> bool:
        return True
