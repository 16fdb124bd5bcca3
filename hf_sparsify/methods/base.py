"""The pruner interface every method implements, and the record a pruning run leaves behind."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..adapters import ModelAdapter
from ..configuration import PruningConfig
from ..data import CalibrationData

__all__ = ["Pruner", "PruningResult", "PruningError"]


class PruningError(RuntimeError):
    """A pruning method could not complete (numerical failure, impossible target). The message names the layer."""


@dataclass
class PruningResult:
    """What a pruning run did: per-layer facts, method-specific information, and timings.

    Attributes:
        method: the method's registry name.
        layers: per pruned layer (or structure group), a dict of facts, e.g. ``{"sparsity": 0.5}`` or
            ``{"width": 96, "dense_width": 192}``; methods add what they know (block sizes, thresholds).
        info: method-wide facts (global threshold, chosen block sizes, number of gradients used...).
        timings: seconds per phase (``"gradients"``, ``"fisher"``, ``"elimination"``, ``"selection"``...).
    """

    method: str
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "layers": self.layers, "info": self.info, "timings": self.timings}


class Pruner:
    """Base class of the pruning methods. A method subclasses it next to its config and joins the registry with
    ``register_method(name, ConfigClass, PrunerClass)``.

    Class attributes describe what the method needs so that :func:`hf_sparsify.prune` can check the inputs
    before any work:

    * ``needs_calibration_data``: the method reads data (statistics, gradients).
    * ``structured``: the method removes structures and changes shapes.
    * ``default_num_calibration_samples``: used when the config leaves ``num_calibration_samples`` unset.
    """

    config_class: ClassVar[type[PruningConfig]] = PruningConfig
    needs_calibration_data: ClassVar[bool] = False
    structured: ClassVar[bool] = False
    default_num_calibration_samples: ClassVar[int | None] = None

    def __init__(self, config: PruningConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def needs_labels(self) -> bool:
        """Whether the calibration data must carry labels (a loss is needed). Config-dependent for some methods."""
        return False

    def num_calibration_samples(self) -> int | None:
        return self.config.num_calibration_samples or self.default_num_calibration_samples

    def prune(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        calibration: CalibrationData | None,
        *,
        device: torch.device,
        disable_tqdm: bool = False,
    ) -> PruningResult:
        """Prune ``model`` in place and return what was done."""
        raise NotImplementedError
