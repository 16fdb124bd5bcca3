"""SPDY's layer-wise database for structured levels: every group at every width, from one scoring run.

The reference stores a reconstructed state dict per sparsity level. Structured widths need less: a base method's
per-unit scores give the units a group keeps at *every* width (the highest-scored ones), and its fold values (VBP's
means) give the bias correction of any removal; so the database is the scores and fold values of every group,
plus what they were computed from (the model's weights fingerprint, the base method's configuration). Stored as
``spdy_database.json`` + ``spdy_database.safetensors`` in a folder, it serves any number of targets (and cost
models: the times are the profiler's, cached separately).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...adapters import StructureGroup
from ...structured.allocation import kept_units
from ...structured.shrink import shrink_group

__all__ = ["DATABASE_FORMAT", "LayerDatabase", "model_fingerprint"]

DATABASE_FORMAT = "hf_sparsify.spdy-database/1"
META_NAME = "spdy_database.json"
TENSORS_NAME = "spdy_database.safetensors"


def model_fingerprint(model: nn.Module) -> str:
    """A digest of the model's class, parameter names, shapes, dtypes and values (sums in float64): a database
    scored on other weights is not reused."""
    digest = hashlib.sha1(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = param.detach().double()
            digest.update(f"{name}:{list(param.shape)}:{param.dtype}:{float(values.sum()):.10e}:{float(values.abs().sum()):.10e}".encode())
    return digest.hexdigest()[:20]


@dataclass
class LayerDatabase:
    """Per structure group: the base method's unit scores (higher = kept longer) and fold values (or ``None``).

    Attributes:
        base_method: the registry name of the method that scored the units.
        base_config: its configuration (``to_dict()`` without the version).
        fingerprint: :func:`model_fingerprint` of the dense model scored.
        groups: ``[{"name", "kind", "num_units"}]`` in order.
        scores, folds: ``{group name: tensor}`` (folds: one value per row, or absent).
        num_calibration_samples: images the scores were computed from.
    """

    base_method: str
    base_config: dict[str, Any]
    fingerprint: str
    groups: list[dict[str, Any]]
    scores: dict[str, torch.Tensor]
    folds: dict[str, torch.Tensor] = field(default_factory=dict)
    num_calibration_samples: int | None = None

    @classmethod
    def from_scores(cls, model: nn.Module, base_method: str, base_config: Mapping[str, Any], groups: Sequence[StructureGroup], scores: Mapping[str, torch.Tensor], folds: Mapping[str, torch.Tensor | None], num_calibration_samples: int | None = None) -> LayerDatabase:
        return cls(
            base_method=base_method,
            base_config=_comparable(base_config),
            fingerprint=model_fingerprint(model),
            groups=[{"name": g.name, "kind": g.kind, "num_units": g.num_units} for g in groups],
            scores={g.name: scores[g.name].detach().cpu().to(torch.float64) for g in groups},
            folds={g.name: folds[g.name].detach().cpu().to(torch.float64) for g in groups if folds.get(g.name) is not None},
            num_calibration_samples=num_calibration_samples,
        )

    # ------------------------------------------------------------------------------------------ use
    def kept(self, name: str, width: int) -> torch.Tensor:
        """The units group ``name`` keeps at ``width`` (its ``width`` highest-scored, sorted)."""
        return kept_units(self.scores[name], width)

    def stitch(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[int]) -> nn.Module:
        """A copy of the dense ``model`` with every group shrunk to its width (the fold applied): the stitched
        model of a profile."""
        stitched = copy.deepcopy(model)
        for group, width in zip(groups, widths):
            if width != group.num_units:
                shrink_group(stitched, copy.copy(group), self.kept(group.name, width), self.folds.get(group.name))
        return stitched

    def mismatch(self, model: nn.Module, base_method: str, base_config: Mapping[str, Any], groups: Sequence[StructureGroup]) -> str | None:
        """Why this database cannot serve ``model`` with this base method and groups, or ``None``."""
        if self.base_method != base_method:
            return f"it was scored by {self.base_method!r}, not {base_method!r}"
        if self.base_config != _comparable(base_config):
            differing = sorted(k for k in set(self.base_config) | set(_comparable(base_config)) if self.base_config.get(k) != _comparable(base_config).get(k))
            return f"the base method's settings differ ({', '.join(differing)})"
        if [(g["name"], g["num_units"]) for g in self.groups] != [(g.name, g.num_units) for g in groups]:
            return "its structure groups differ from this model's"
        if self.fingerprint != model_fingerprint(model):
            return "it was scored on other weights"
        return None

    # ------------------------------------------------------------------------------------------ storage
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``spdy_database.json`` and ``spdy_database.safetensors`` into ``directory`` (created)."""
        tensors = {f"scores/{k}": v.contiguous() for k, v in self.scores.items()}
        tensors.update({f"folds/{k}": v.contiguous() for k, v in self.folds.items()})
        meta = {
            "format": DATABASE_FORMAT,
            "base_method": self.base_method,
            "base_config": self.base_config,
            "fingerprint": self.fingerprint,
            "groups": self.groups,
            "num_calibration_samples": self.num_calibration_samples,
        }
        return write_database(directory, META_NAME, TENSORS_NAME, meta, tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LayerDatabase | None:
        """The database in ``directory``, or ``None`` when it holds none (or one of another format)."""
        stored = read_database(directory, META_NAME, TENSORS_NAME, DATABASE_FORMAT)
        if stored is None:
            return None
        meta, tensors = stored
        return cls(
            base_method=meta["base_method"],
            base_config=meta["base_config"],
            fingerprint=meta["fingerprint"],
            groups=meta["groups"],
            scores={k[len("scores/"):]: v for k, v in tensors.items() if k.startswith("scores/")},
            folds={k[len("folds/"):]: v for k, v in tensors.items() if k.startswith("folds/")},
            num_calibration_samples=meta.get("num_calibration_samples"),
        )


def write_database(directory: str | os.PathLike, meta_name: str, tensors_name: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a database's tensors (safetensors) and description (JSON, with its ``format``) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / tensors_name))
    (directory / meta_name).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return directory


def read_database(directory: str | os.PathLike, meta_name: str, tensors_name: str, format: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(meta, tensors)`` of the database in ``directory``, or ``None`` when it holds none, an unreadable one or
    one of another ``format``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / meta_name).is_file() or not (directory / tensors_name).is_file():
        return None
    try:
        meta = json.loads((directory / meta_name).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / tensors_name))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != format:
        return None
    return meta, tensors


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration dict without its version stamp, through JSON (so that a loaded one compares equal)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "hf_sparsify_version"}, default=str))
