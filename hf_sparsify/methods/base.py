"""The pruner interface every method implements, and the record a pruning run leaves behind.

A method is one folder under ``hf_sparsify/methods/`` (or anywhere else): ``config.py`` with its
:class:`~hf_sparsify.PruningConfig` subclass, a pruner subclassing :class:`Pruner`, and one line in its
``__init__.py``: ``register_method("name", NameConfig, NamePruner)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..adapters import ModelAdapter
from ..configuration import PruningConfig
from ..data import CalibrationData
from ..errors import HfSparsifyError
from ..utils import PhaseTimer

__all__ = ["Pruner", "PruningResult", "PruningError"]


class PruningError(HfSparsifyError, RuntimeError):
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
        summary: the figures the CLI prints after pruning (``{"sparsity": 0.5}``; a structured method:
            ``{"neurons_removed": 0.3, "macs_reduction": 0.25}``).
    """

    method: str
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str):
        """``with result.timed("phase"):`` adds the phase's wall time to ``timings``."""
        with PhaseTimer(self.timings)(phase):
            yield

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "layers": self.layers, "info": self.info, "timings": self.timings, "summary": self.summary}


class Pruner:
    """Base class of the pruning methods. A method subclasses it next to its config and joins the registry with
    ``register_method(name, ConfigClass, PrunerClass)``.

    Class attributes declare what the method needs, so that :func:`hf_sparsify.prune`, the CLI and
    ``SparseTrainer`` can check the inputs before any work:

    * ``config_class``: the configuration class it takes.
    * ``needs_calibration_data``: the method reads data (statistics, gradients).
    * ``changes_shapes``: the method removes structures, so the model's shapes change (structured pruning);
      a pruning schedule can then only run it once, before training.

    Everything that depends on the settings (labels, batch size, number of images) is asked of the config.
    """

    config_class: ClassVar[type[PruningConfig]] = PruningConfig
    needs_calibration_data: ClassVar[bool] = False
    changes_shapes: ClassVar[bool] = False

    def __init__(self, config: PruningConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def plan(self, model: nn.Module, adapter: ModelAdapter, *, device: torch.device | str | None = None) -> list[str]:
        """What the run will do on ``device`` (default: the model's), in a few lines shown before it starts (passes
        over the data, memory...). It may raise when the run cannot fit, before any work is done."""
        return []

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
