"""SPDY with per-layer **sparsity levels** (Frantar & Alistarh's original setting): every prunable layer takes one
level of a grid — dense or one of ``num_levels − 1`` densities (``mask_structure="unstructured"``, the reference's
geometric grid 0.40 … 0.99), or dense or 2:4 (``mask_structure="2:4"``) — chosen so that the model meets a cost
target with the least calibration loss. The model keeps its shapes: the levels are zeros in the weights.

1. **Database** (:class:`LevelDatabase`): every layer at every level from **one** pass of the base method,
   each layer pruned on its own:

   * ``"magnitude"``: the layer's ``|w|`` order (one stable sort per layer; a level keeps the largest weights);
   * ``"cap"``: one Fisher, one inverse and one greedy elimination per block
     (:meth:`~hf_sparsify.methods.cap.pruner.CAPPruner.layer_variants`); the elimination keeps every block's order
     and cumulative losses, so a density only decides how many weights each block loses (the layer's lowest
     cumulative losses) and the weights are replayed; 2:4 comes from CAP's N:M elimination;
   * ``"fastcap"``: one statistics pass, the shared factor of each layer computed once, then one cheap
     column-sequential solve per level.

   Saved in ``database`` (``spdy_level_database.json`` + ``.safetensors``: the weights of every layer at every
   non-dense level, in the model's dtype, as the reference's state dict per level), with the fingerprint of the
   weights and the base settings; a database that does not match is not reused (a warning says why).
2. **Cost tables**: ``cost="macs"``: a layer at a level costs its MACs per image (tokens or pixels counted) times
   the fraction of its weights the level keeps (the OBC/SPDY FLOPs constraint); the whole model's dense MACs give
   the cost outside the layers, which is paid from the budget. ``cost="latency"`` (2:4 levels on the
   ``semi-structured`` runtime only, the one runtime here that runs a sparse layer faster):
   :meth:`~hf_sparsify.speed.LatencyProfiler.layer_times` and the whole model's time.
3. **Search** (:mod:`.search`, unchanged): the dynamic programme and the coefficient search; a profile's loss is
   the calibration loss of the stitched model (the dense model with every layer's weight at its level).
4. **Output**: the model with the chosen levels written into its weights, ``result.layers`` (per layer its
   sparsity, level, cost), ``info["spdy"]`` with the per-layer profile and the predicted and measured speed-ups
   (``cost="macs"``: MACs counted on the pruned model, dense ÷ non-zero).

```python
>>> import hf_sparsify
>>> config = hf_sparsify.SPDYConfig(target_speedup=2.0, base_method="magnitude", cost="macs", num_levels=12,
...                                 num_random_starts=4, search_steps=8, patience=4, num_calibration_samples=32)
>>> pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor)
>>> spdy = pruned.pruning_result.info["spdy"]
>>> spdy["levels"], spdy["predicted_speedup"] >= 2.0, spdy["measured_speedup"] >= 2.0
('unstructured', True, True)
>>> spdy["profile"][0]["name"], spdy["profile"][0]["kind"] in ("unstructured", "dense")
('vit.layers.0.attention.q_proj', True)
```
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...configuration import PruningConfig, PruningConfigError, get_method, parse_nm
from ...data import CalibrationDataError
from ...speed import LatencyProfiler
from ...structured import attention_query_modules, count_macs
from ...surgery import check_nm, nm_mask
from ...utils import get_logger
from ..base import Pruner, PruningResult
from .calibration import calibration_loss, calibration_set
from .config import UNSTRUCTURED_BASE_METHODS, SPDYBaseMethodError, SPDYConfig
from .database import _comparable, model_fingerprint, read_database, write_database
from .outcome import (
    Budgeted,
    checked_budget,
    latency_profiler,
    record_measurement,
    search_record,
    summarise,
    time_against_dense,
)
from .search import (
    search_profile,
)

__all__ = ["LEVEL_DATABASE_FORMAT", "LevelDatabase", "UnstructuredSPDYPruner", "magnitude_variants", "make_base_config"]

logger = get_logger(__name__)

LEVEL_DATABASE_FORMAT = "hf_sparsify.spdy-level-database/1"
META_NAME = "spdy_level_database.json"
TENSORS_NAME = "spdy_level_database.safetensors"


# ------------------------------------------------------------------------------------------ the database
@dataclass
class LevelDatabase:
    """Every target layer's weights at every non-dense level (level 0 is the dense model's own weight).

    Attributes:
        base_method: the registry name of the method that pruned the layers.
        base_config: its configuration (``to_dict()`` without the version).
        fingerprint: :func:`~hf_sparsify.methods.spdy.database.model_fingerprint` of the dense model.
        levels: the levels, dense first: densities (``1.0`` = dense) or ``[1.0, "2:4"]``.
        layers: the layer names, in order.
        weights: ``{layer: [weight at level 1, level 2, ...]}`` in the model's dtype.
        num_calibration_samples: images the base method read (``None`` for magnitude).
    """

    base_method: str
    base_config: dict[str, Any]
    fingerprint: str
    levels: list[Any]
    layers: list[str]
    weights: dict[str, list[torch.Tensor]]
    num_calibration_samples: int | None = None
    _nonzeros: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_variants(cls, model: nn.Module, base_method: str, base_config: Mapping[str, Any], levels: Sequence[Any], variants: Mapping[str, Sequence[torch.Tensor]], num_calibration_samples: int | None = None) -> LevelDatabase:
        return cls(
            base_method=base_method,
            base_config=_comparable(base_config),
            fingerprint=model_fingerprint(model),
            levels=list(levels),
            layers=list(variants),
            weights={name: [w.detach() for w in ws] for name, ws in variants.items()},
            num_calibration_samples=num_calibration_samples,
        )

    def weight(self, name: str, level: int) -> torch.Tensor | None:
        """The weight of layer ``name`` at ``level`` (``None`` for level 0, the dense weight)."""
        return None if level == 0 else self.weights[name][level - 1]

    def nonzeros(self, name: str) -> list[int]:
        """Non-zero weights of layer ``name`` at every non-dense level."""
        if name not in self._nonzeros:
            self._nonzeros[name] = [int(torch.count_nonzero(w)) for w in self.weights[name]]
        return self._nonzeros[name]

    def mismatch(self, model: nn.Module, base_method: str, base_config: Mapping[str, Any], levels: Sequence[Any], layers: Sequence[str]) -> str | None:
        """Why this database cannot serve ``model`` with this base method, levels and layers, or ``None``."""
        if self.base_method != base_method:
            return f"it was built by {self.base_method!r}, not {base_method!r}"
        wanted = _comparable(base_config)
        if self.base_config != wanted:
            differing = sorted(k for k in set(self.base_config) | set(wanted) if self.base_config.get(k) != wanted.get(k))
            return f"the base method's settings differ ({', '.join(differing)})"
        if json.loads(json.dumps(list(levels))) != json.loads(json.dumps(self.levels)):
            return "its levels differ (num_levels, min_sparsity, max_sparsity or mask_structure)"
        if list(layers) != self.layers:
            return "its layers differ from this model's targets"
        if self.fingerprint != model_fingerprint(model):
            return "it was built on other weights"
        return None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``spdy_level_database.json`` and ``spdy_level_database.safetensors`` into ``directory`` (created)."""
        tensors = {f"{name}/{level}": w.detach().cpu().contiguous() for name, ws in self.weights.items() for level, w in enumerate(ws, 1)}
        meta = {
            "format": LEVEL_DATABASE_FORMAT,
            "base_method": self.base_method,
            "base_config": self.base_config,
            "fingerprint": self.fingerprint,
            "levels": self.levels,
            "layers": self.layers,
            "num_calibration_samples": self.num_calibration_samples,
        }
        return write_database(directory, META_NAME, TENSORS_NAME, meta, tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LevelDatabase | None:
        """The database in ``directory``, or ``None`` when it holds none (or one of another format)."""
        stored = read_database(directory, META_NAME, TENSORS_NAME, LEVEL_DATABASE_FORMAT)
        if stored is None:
            return None
        meta, tensors = stored
        count = len(meta["levels"]) - 1
        try:
            weights = {name: [tensors[f"{name}/{level}"] for level in range(1, count + 1)] for name in meta["layers"]}
        except KeyError:
            return None
        return cls(
            base_method=meta["base_method"],
            base_config=meta["base_config"],
            fingerprint=meta["fingerprint"],
            levels=meta["levels"],
            layers=list(meta["layers"]),
            weights=weights,
            num_calibration_samples=meta.get("num_calibration_samples"),
        )


# ------------------------------------------------------------------------------------------ the base method
def make_base_config(config: SPDYConfig, *, has_labels: bool = True) -> PruningConfig:
    """The base method's configuration for building the database: its target is a placeholder (each layer is
    pruned to every level), its mask structure SPDY's, its calibration settings SPDY's (the Fisher's mini-batch
    gradients are the calibration batches), then ``base_settings``."""
    entry = get_method(config.base_method)
    cls = entry.config_class
    base_settings = dict(config.base_settings or {})
    nm = None if config.mask_structure == "unstructured" else parse_nm(config.mask_structure)
    settings: dict[str, Any] = {
        cls.target_field: 1 - nm[0] / nm[1] if nm is not None else 0.5,  # a placeholder: every level is built
        "mask_structure": config.mask_structure,
        "targets": config.targets,
        "ignore": config.ignore,
        "seed": config.seed,
    }
    if entry.pruner_class.needs_calibration_data:
        settings["calibration_batch_size"] = config.calibration_batch_size
        if "num_grads" not in base_settings:
            settings["num_calibration_samples"] = config.calibration_images()
        grad_batch = base_settings.get("grad_batch_size")
        if grad_batch is not None and grad_batch != config.calibration_batch_size:
            raise PruningConfigError(
                f"SPDY's base method {config.base_method!r} reads SPDY's calibration batches: grad_batch_size={grad_batch} cannot differ "
                f"from calibration_batch_size={config.calibration_batch_size}; set calibration_batch_size instead."
            )
        if not has_labels or config.loss == "kl":
            if cls.label_free_settings is None:
                raise PruningConfigError(f"base_method={config.base_method!r} needs labelled calibration data, and these images have no labels.")
            settings.update(cls.label_free_settings)
    settings.update(base_settings)
    try:
        return cls(**settings)
    except (PruningConfigError, TypeError) as err:
        raise PruningConfigError(f"SPDY's base method {config.base_method!r}: {err}") from None


@torch.no_grad()
def magnitude_variants(layers, sparsities: Sequence[float], nm: tuple[int, int] | None = None) -> dict[str, list[torch.Tensor]]:
    """Every layer's weight at every sparsity by magnitude, each layer on its own (as ``MagnitudeConfig`` with
    ``sparsity_distribution="uniform"``: the ``round(s·numel)`` smallest ``|w|`` removed, ties by position); with
    ``nm``, the one N:M variant (the ``N`` largest of every ``M``). One stable sort per layer serves every
    sparsity, so a sparser level never keeps a weight a denser one removed."""
    from ..magnitude.pruner import check_finite_weights

    check_finite_weights(layers)
    variants: dict[str, list[torch.Tensor]] = {}
    for layer in layers:
        weight = layer.weight.detach()
        if nm is not None:
            try:
                check_nm(weight.shape, nm[1], layer.name)
            except ValueError as err:
                raise PruningConfigError(str(err)) from None
            variants[layer.name] = [weight * nm_mask(weight.abs(), nm[0], nm[1])]
            continue
        order = torch.sort(weight.abs().reshape(-1), stable=True).indices
        out = []
        for sparsity in sparsities:
            keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
            keep[order[: round(sparsity * weight.numel())]] = False
            out.append(weight * keep.reshape(weight.shape))
        variants[layer.name] = out
    return variants


# ------------------------------------------------------------------------------------------ the pruner
def _density_of(level: float | str) -> float:
    """The fraction of weights a level keeps: a density, or ``N/M`` of an ``"N:M"`` level."""
    if isinstance(level, str):
        n, m = parse_nm(level)
        return n / m
    return float(level)


class UnstructuredSPDYPruner(Pruner):
    """SPDY over per-layer sparsity levels from an unstructured base method (see the module docstring).
    :class:`~hf_sparsify.methods.spdy.pruner.SPDYPruner` returns one of these when ``base_method`` is
    ``"magnitude"``, ``"cap"`` or ``"fastcap"``."""

    config_class = SPDYConfig
    needs_calibration_data = True
    changes_shapes = False

    def __init__(self, config: SPDYConfig):
        super().__init__(config)
        if config.base_method not in UNSTRUCTURED_BASE_METHODS:
            raise SPDYBaseMethodError(f"base_method={config.base_method!r} does not give sparsity levels; use one of {list(UNSTRUCTURED_BASE_METHODS)}.")
        make_base_config(config)  # the base settings are checked before any work

    def _nm(self) -> tuple[int, int] | None:
        structure = self.config.mask_structure
        return None if structure == "unstructured" else parse_nm(structure)

    def plan(self, model, adapter, *, device=None) -> list[str]:
        config: SPDYConfig = self.config
        layers = adapter.select_layers(config.targets, config.ignore)
        levels = config.sparsity_levels()
        target = f"{config.target_speedup:g}× speed-up" if config.target_speedup is not None else f"a cost of {config.target_cost:g}"
        cost = "MACs per image × density" if config.cost == "macs" else f"latency of dense and 2:4 layers ({config.profile_runtime}, batch {config.profile_batch_size})"
        grid = f"dense or {config.mask_structure}" if self._nm() else f"dense + {len(levels) - 1} sparsities {config.min_sparsity:g}–{config.max_sparsity:g}"
        return [
            f"SPDY: {target} in {cost}; {len(layers)} layers, {grid} each, every level from one pass of {config.base_method}",
            (
                f"SPDY: search over {config.num_random_starts} random starts + up to {config.search_steps} local steps, each a dynamic programme "
                f"({config.num_buckets:,} buckets) and a stitched model's loss on {config.calibration_images():,} images"
            ),
        ]

    # ------------------------------------------------------------------------------------------ database
    def _database(self, model, adapter, layers, calibration, *, device, disable_tqdm, result) -> LevelDatabase:
        config: SPDYConfig = self.config
        levels = config.sparsity_levels()
        base_config = make_base_config(config, has_labels=calibration.has_labels is not False)
        base_dict = base_config.to_dict()
        names = [layer.name for layer in layers]
        database = LevelDatabase.load(config.database) if config.database else None
        reason = database.mismatch(model, config.base_method, base_dict, levels, names) if database is not None else None
        if database is not None and reason is None:
            self._database_source = "loaded"
            return database
        if database is not None:
            logger.warning(f"SPDY: the level database in {config.database} is not reused ({reason}); the layers are pruned again.")
        sparsities = [1.0 - d for d in levels[1:]] if self._nm() is None else []
        with result.timed("database"):
            if config.base_method == "magnitude":
                variants = magnitude_variants(layers, sparsities, self._nm())
                images = None
            else:
                base = get_method(config.base_method).pruner_class(base_config)
                variants = base.layer_variants(model, adapter, calibration, sparsities, device=device, result=result, disable_tqdm=disable_tqdm)
                images = result.info.get("num_calibration_samples")
        database = LevelDatabase.from_variants(model, config.base_method, base_dict, levels, {n: variants[n] for n in names}, images)
        self._database_source = "built"
        if config.database:
            database.save(config.database)
            self._database_source = "built and saved"
        return database

    # ------------------------------------------------------------------------------------------ costs
    def _dense_costs(self, model, adapter, names: list[str], profiler: LatencyProfiler | None) -> tuple[float, list[float], Any, str]:
        """The whole model's dense cost, every layer's dense cost, what the level costs are derived from
        (MACs: positions per image; latency: the 2:4 times) and the unit. Measured before any pruning."""
        if profiler is None:
            counted = count_macs(model, attention_query_modules(adapter))
            # a layer the forward does not reach (none in the supported families) costs nothing
            dense = [float(counted["per_module"].get(n, 0)) for n in names]
            return float(counted["total"]), dense, [counted["positions"].get(n, 0) for n in names], "MACs"
        times = profiler.layer_times(model, names, levels=("dense", "2:4"))
        dense = [float(times[n]["dense"]["seconds"]) for n in names]
        return float(profiler.model_time(model)), dense, [float(times[n]["2:4"]["seconds"]) for n in names], "seconds"

    def _tables(self, names, dense, per_level, database: LevelDatabase, unit: str) -> list[list[float]]:
        if unit == "MACs":  # positions × non-zero weights
            return [[d] + [float(p * nnz) for nnz in database.nonzeros(n)] for n, d, p in zip(names, dense, per_level)]
        return [[d, t] for d, t in zip(dense, per_level)]

    # ------------------------------------------------------------------------------------------ the run
    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: SPDYConfig = self.config
        if calibration is None:
            raise CalibrationDataError("SPDY reads calibration data (the search's loss, and the base method's gradients): pass calibration_data= to prune().")
        if config.loss == "labels" and calibration.has_labels is False:
            raise CalibrationDataError(config.missing_labels_message())
        result = PruningResult(method=config.method)
        layers = adapter.select_layers(config.targets, config.ignore)
        names = [layer.name for layer in layers]
        levels = config.sparsity_levels()
        profiler = latency_profiler(config, model, device) if config.cost == "latency" else None  # the runtime is checked before any work
        dense_model = copy.deepcopy(model) if profiler is not None and config.measure_speedup else None
        with result.timed("tables"):
            total, dense, per_level, unit = self._dense_costs(model, adapter, names, profiler)
        database = self._database(model, adapter, layers, calibration, device=device, disable_tqdm=disable_tqdm, result=result)
        tables = self._tables(names, dense, per_level, database, unit)
        budgeted = checked_budget(
            config, total, tables, unit,
            smallest=f"layer at {config.mask_structure if self._nm() else f'sparsity {config.max_sparsity:g}'}", parts="layers",
            advice="." if self._nm() else ", or raise max_sparsity.",
        )  # fmt: skip

        kind, batches, reference = calibration_set(model, calibration, config.loss)
        work = copy.deepcopy(model)
        work_weights = {n: work.get_submodule(n).weight for n in names}
        dense_weights = {layer.name: layer.weight.detach().clone() for layer in layers}
        current = [0] * len(names)

        def stitch(profile: Sequence[int]) -> nn.Module:
            for i, (name, level) in enumerate(zip(names, profile)):
                if current[i] != level:
                    stored = database.weight(name, level)
                    work_weights[name].copy_(dense_weights[name] if stored is None else stored)
                    current[i] = level
            return work

        def evaluate(profile: list[int]) -> float:
            return calibration_loss(stitch(profile), kind, batches, reference)

        with result.timed("search"):
            found = search_profile(config, evaluate, tables, budgeted.budget)
        picked = list(found.profile)
        for layer, level in zip(layers, picked):  # the chosen levels, written into the model
            stored = database.weight(layer.name, level)
            if stored is not None:
                layer.weight.copy_(stored)
        spdy = self._record(layers, levels, tables, picked, found, result, total=total, budgeted=budgeted, unit=unit, kind=kind)
        if profiler is None:
            after = count_macs(model, attention_query_modules(adapter))
            spdy["measured_speedup"] = after["total"] / after["effective"] if after["effective"] else math.inf
            spdy["measured_by"] = "MACs counted on the pruned model (dense ÷ non-zero)"
        elif dense_model is not None:
            with result.timed("measurement"):
                timed = time_against_dense(profiler, model, dense_model)
            record_measurement(spdy, timed, model, config.target_speedup)
        if profiler is not None:
            spdy["profiler"] = {"cache": str(profiler.cache_path) if profiler.cache_path else None, "stale_cache": profiler.stale_reason}
        summarise(result, spdy)
        return result

    def _record(self, layers, levels, tables, picked, found, result: PruningResult, *, total, budgeted: Budgeted, unit, kind) -> dict[str, Any]:
        config: SPDYConfig = self.config
        label = config.mask_structure if self._nm() else "unstructured"
        profile = []
        zeros = numel = 0
        for layer, table, level, coefficient in zip(layers, tables, picked, found.coefficients):
            weight = layer.weight.detach()
            layer_zeros = int(weight.numel() - torch.count_nonzero(weight))
            zeros, numel = zeros + layer_zeros, numel + weight.numel()
            value = levels[level]
            row = {
                "name": layer.name,
                "kind": label if level else "dense",
                "level": level,
                "num_levels": len(levels),
                "density": 1.0 - layer_zeros / weight.numel(),
                "sparsity": layer_zeros / weight.numel(),
                "level_density": _density_of(value),
                "numel": weight.numel(),
                "cost": table[level],
                "dense_cost": table[0],
                "coefficient": coefficient,
            }
            profile.append(row)
            result.layers[layer.name] = {k: row[k] for k in ("sparsity", "numel", "level", "num_levels", "density", "cost", "dense_cost", "coefficient")}
        extra = {
            "levels": "unstructured" if not self._nm() else config.mask_structure,
            "level_values": [v if isinstance(v, str) else float(v) for v in levels],
            "database": self._database_source,
            "loss": kind,
        }
        spdy = search_record(
            config, result, unit=unit, total=total, tables=tables, budgeted=budgeted, picked=picked, found=found, final_loss=found.loss,
            corrections=[], profile=profile, extra=extra,
        )  # fmt: skip
        result.summary["sparsity"] = zeros / numel if numel else 0.0
        if not any(picked):
            logger.warning("SPDY: the chosen profile keeps every layer dense (the target is met without pruning).")
        return spdy

