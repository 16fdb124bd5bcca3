"""SPDY (Frantar & Alistarh, ICML 2022) on the structured-pruning core and the latency profiler: per-group widths
that meet a speed-up target on this machine with the least calibration loss.

1. **Database** (:mod:`.database`): the base method (``"vbp"`` / ``"sosp-h"``) scores every unit of every structure
   group once; its scores give the units kept at any width, its fold values the bias correction. Loaded from
   ``database`` when it was scored on these weights with these settings.
2. **Tables**: every group's cost at every level (:func:`.search.level_widths`): measured seconds of the group's
   owner module (:class:`~hf_sparsify.speed.LatencyProfiler`, cached per device/dtype/batch/runtime/versions; a
   stale or foreign cache is re-measured) or MACs; plus the whole model's cost, so that the time no group controls
   is known and paid from the budget.
3. **Dynamic programme + search** (:mod:`.search`): for a coefficient vector ``c`` the programme picks the levels
   minimising ``Σ c_l·(i/(n−1))²`` within the budget; the search keeps the ``c`` whose stitched model (the dense
   model with every group shrunk to its level, the fold applied) has the lowest calibration loss.
4. **Surgery** by the core; then the pruned model is timed against the dense one (``cost="latency"``) and the
   predicted and measured speed-ups go to ``pruning_result.info["spdy"]`` (with the per-group profile) and to the
   model card.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...adapters import ATTENTION_HEAD, StructureGroup
from ...configuration import PruningConfigError, get_method
from ...data import CalibrationDataError
from ...hub.chart import render_sparsity_chart
from ...report import sparsity_report
from ...speed import LatencyCost
from ...structured import (
    Allocation,
    Budget,
    MacsCost,
    StructuredPruner,
    attention_query_modules,
)
from ...structured.groups import KIND_NOUNS
from ...utils import get_logger
from ..base import PruningResult
from .calibration import calibration_loss, calibration_set
from .config import (
    GPU_ROUND_TO,
    STRUCTURED_BASE_METHODS,
    UNSTRUCTURED_BASE_METHODS,
    SPDYBaseMethodError,
    SPDYConfig,
)
from .database import LayerDatabase
from .outcome import (
    checked_budget,
    latency_profiler,
    record_measurement,
    search_record,
    summarise,
    time_against_dense,
)
from .search import (
    controlled_budget,
    corrected_target,
    level_widths,
    max_speedup,
    search_profile,
    solve_profile,
    speedup_of,
)
from .unstructured import UnstructuredSPDYPruner

__all__ = ["SPDYBaseMethodError", "SPDYPruner", "UnstructuredSPDYPruner", "profile_table", "save_profile"]

logger = get_logger(__name__)


def _base_entry(name: str):
    entry = get_method(name)  # unknown names: PruningConfigError with a suggestion
    pruner_class = entry.pruner_class
    if not issubclass(pruner_class, StructuredPruner) or name == "spdy":
        raise SPDYBaseMethodError(
            f"base_method={name!r} cannot give SPDY per-layer variants: structure widths come from a structured method's per-unit "
            f"scores ({', '.join(STRUCTURED_BASE_METHODS)}), sparsity levels from one pass of {', '.join(UNSTRUCTURED_BASE_METHODS)}. "
            f"Use base_method one of {list(STRUCTURED_BASE_METHODS + UNSTRUCTURED_BASE_METHODS)}."
        )
    return entry.config_class, pruner_class


class SPDYPruner(StructuredPruner):
    """SPDY on the structured core (see the module docstring and docs/spdy.md).

    With an unstructured base method (``"magnitude"``, ``"cap"``, ``"fastcap"``) the levels are per-layer sparsities
    and ``SPDYPruner(config)`` returns an :class:`~hf_sparsify.methods.spdy.unstructured.UnstructuredSPDYPruner`
    (which keeps the model's shapes)."""

    config_class = SPDYConfig
    title = "SPDY"
    structure_kinds = ("mlp", "heads", "channels")
    score_phase = "database"

    def __new__(cls, config: SPDYConfig | None = None, *args, **kwargs):
        if cls is SPDYPruner and isinstance(config, SPDYConfig) and config.unstructured_levels():
            return UnstructuredSPDYPruner(config)  # not an SPDYPruner: __init__ is not called again
        return super().__new__(cls)

    def __init__(self, config: SPDYConfig):
        super().__init__(config)
        self._base_config_class, self._base_pruner_class = _base_entry(config.base_method)
        self._base = self._make_base(has_labels=True)
        self._runs_on_gpu = False  # set by _note_device from where the model will run

    # ------------------------------------------------------------------------------------------ the base method
    def _make_base(self, has_labels: bool) -> StructuredPruner:
        config: SPDYConfig = self.config
        cls = self._base_config_class
        settings: dict[str, Any] = {
            cls.target_field: 0.0,  # the base method only scores: its own budget is never used
            "targets": config.targets,
            "ignore": config.ignore,
            "num_calibration_samples": config.calibration_images(),
            "calibration_batch_size": config.calibration_batch_size,
            "seed": config.seed,
        }
        if not has_labels or config.loss == "kl":
            if cls.label_free_settings is None:
                raise PruningConfigError(f"base_method={config.base_method!r} needs labelled calibration data, and these images have no labels.")
            settings.update(cls.label_free_settings)
        settings.update(config.base_settings or {})
        try:
            base_config = cls(**settings)
        except PruningConfigError as err:
            raise PruningConfigError(f"SPDY's base method {config.base_method!r}: {err}") from None
        return self._base_pruner_class(base_config)

    def kinds(self) -> list[str]:
        return self._base.kinds()

    def select(self, adapter) -> list[StructureGroup]:
        return self._base.select(adapter)

    def allocation(self) -> Allocation:
        base = self._base.allocation()
        return Allocation(Budget(0.0, "units", field="target_speedup"), strategy="dp", round_to={k: self._round_for(k) for k in KIND_NOUNS}, min_per_layer={k: base.min_for(k) for k in KIND_NOUNS})

    def _round_for(self, kind: str) -> int:
        if self.config.round_to is not None and kind != ATTENTION_HEAD:
            return self.config.round_to
        base = self._base.allocation().round_for(kind)
        if kind != ATTENTION_HEAD and self._runs_on_gpu:
            return max(base, GPU_ROUND_TO)  # GPU matrix kernels run at full rate on multiples of 64
        return base

    def _note_device(self, device) -> None:
        """Where the pruned model will run (``profile_device``, else where it prunes): on a GPU the default widths
        are multiples of :data:`GPU_ROUND_TO`."""
        where = self.config.profile_device or device
        self._runs_on_gpu = where is not None and torch.device(where).type == "cuda"

    def _levels(self, groups: list[StructureGroup]) -> list[list[int]]:
        base = self._base.allocation()
        return [level_widths(g.num_units, self._round_for(g.kind), base.min_for(g.kind), self.config.num_levels) for g in groups]

    def plan(self, model, adapter, *, device=None) -> list[str]:
        config: SPDYConfig = self.config
        self._note_device(device if device is not None else next(model.parameters()).device)
        groups = self.select(adapter)
        levels = self._levels(groups)
        target = f"{config.target_speedup:g}× speed-up" if config.target_speedup is not None else f"a cost of {config.target_cost:g}"
        cost = "MACs per image" if config.cost == "macs" else f"latency measured {'in the whole model per block class and width' if config.latency_tables == 'in_context' else 'per block'} ({config.profile_runtime}, batch {config.profile_batch_size})"
        return [
            f"SPDY: {target} in {cost}; {len(groups)} groups scored by {config.base_method}, {sum(map(len, levels)):,} levels in all",
            (
                f"SPDY: search over {config.num_random_starts} random starts + up to {config.search_steps} local steps, each a dynamic programme "
                f"({config.num_buckets:,} buckets) and a stitched model's loss on {config.calibration_images():,} images"
            ),
        ]

    # ------------------------------------------------------------------------------------------ the flow
    def prepare(self, model, adapter, groups, calibration) -> None:
        config: SPDYConfig = self.config
        if calibration is None:
            raise CalibrationDataError("SPDY reads calibration data (the base method's scores and the search's loss): pass calibration_data= to prune().")
        if config.loss == "labels" and calibration.has_labels is False:
            raise CalibrationDataError(config.missing_labels_message())
        self._base = self._make_base(has_labels=calibration.has_labels is not False)
        self._note_device(next(model.parameters()).device)
        self._calibration = calibration
        self._device_model = None

    def score(self, model, adapter, groups, calibration, *, device, disable_tqdm, result) -> dict[str, torch.Tensor]:
        config: SPDYConfig = self.config
        base_config = self._base.config.to_dict()
        database = LayerDatabase.load(config.database) if config.database else None
        reason = database.mismatch(model, config.base_method, base_config, groups) if database is not None else None
        if database is not None and reason is None:
            self._database_source = "loaded"
        else:
            if database is not None:
                logger.warning(f"SPDY: the database in {config.database} is not reused ({reason}); the units are scored again.")
            self._base.prepare(model, adapter, groups, calibration)
            scores = self._base.score(model, adapter, groups, calibration, device=device, disable_tqdm=disable_tqdm, result=result)
            folds = {g.name: self._base.fold_values(model, g) for g in groups}
            database = LayerDatabase.from_scores(model, config.base_method, base_config, groups, scores, folds, calibration.num_samples)
            self._database_source = "scored"
            if config.database:
                database.save(config.database)
                self._database_source = "scored and saved"
        self._database = database
        return database.scores

    def fold_values(self, model, group: StructureGroup) -> torch.Tensor | None:
        return self._database.folds.get(group.name)

    def describe_removal(self, model, group, keep, removed) -> dict[str, Any]:
        return dict(self._layer_facts.get(group.name, {}))

    # ------------------------------------------------------------------------------------------ costs
    def _cost_tables(self, model: nn.Module, adapter, groups, levels, device) -> tuple[float, list[list[float]], str]:
        config: SPDYConfig = self.config
        if config.cost == "macs":
            cost = MacsCost(attention_query_modules(adapter))
            return cost.total(model), cost.group_costs(model, groups, levels), "MACs"
        self._profiler = latency_profiler(config, model, device)
        cost = LatencyCost(self._profiler, in_context=config.latency_tables == "in_context")
        total = cost.total(model)
        return total, cost.group_costs(model, groups, levels), "seconds"

    # ------------------------------------------------------------------------------------------ allocation
    def allocate(self, model, adapter, groups, scores, allocation, result) -> list[int]:
        config: SPDYConfig = self.config
        device = next(model.parameters()).device
        levels = self._levels(groups)
        with result.timed("tables"):
            total, tables, unit = self._cost_tables(model, adapter, groups, levels, device)
        budgeted = checked_budget(
            config, total, tables, unit,
            smallest=f"{'/'.join(sorted({KIND_NOUNS[g.kind] for g in groups}))} group at its smallest width", parts="groups",
            advice=", or allow narrower widths (min per layer, round_to).",
        )  # fmt: skip

        loss_kind, batches, reference = calibration_set(model, self._calibration, config.loss)

        def evaluate(profile: list[int]) -> float:
            stitched = self._database.stitch(model, groups, [lv[i] for lv, i in zip(levels, profile)])
            return calibration_loss(stitched, loss_kind, batches, reference)

        with result.timed("search"):
            found = search_profile(config, evaluate, tables, budgeted.budget)
        picked = list(found.profile)
        corrections = self._correct(model, groups, levels, tables, total, budgeted.fastest, found, picked, result) if self._corrects() else []
        final_loss = found.loss if picked == found.profile else evaluate(picked)
        widths = [lv[i] for lv, i in zip(levels, picked)]
        self._layer_facts = {
            g.name: {"level": i, "num_levels": len(lv), "cost": t[i], "dense_cost": t[0], "coefficient": c}
            for g, lv, t, i, c in zip(groups, levels, tables, picked, found.coefficients)
        }
        profile = [
            {"name": g.name, "kind": g.kind, "width": lv[i], "dense_width": g.num_units, "level": i, "cost": t[i], "dense_cost": t[0], "coefficient": c}
            for g, lv, t, i, c in zip(groups, levels, tables, picked, found.coefficients)
        ]
        search_record(
            config, result, unit=unit, total=total, tables=tables, budgeted=budgeted, picked=picked, found=found, final_loss=final_loss,
            corrections=corrections, profile=profile, extra={"database": self._database_source, "loss": loss_kind},
        )  # fmt: skip
        if config.cost == "latency":
            result.info["spdy"]["profiler"] = {
                "cache": str(self._profiler.cache_path) if self._profiler.cache_path else None,
                "stale_cache": self._profiler.stale_reason,
                "tables": config.latency_tables,
            }
        return widths

    def _corrects(self) -> bool:
        config: SPDYConfig = self.config
        return config.cost == "latency" and config.measure_speedup and config.target_speedup is not None and config.speedup_corrections > 0

    def _correct(self, model, groups, levels, tables, total, fastest, found, picked: list[int], result) -> list[dict[str, Any]]:
        """Time the stitched model of ``picked`` against the dense one; while its speed-up is below the target or above
        it by more than the tolerance, solve again for the target scaled by the predicted/measured gap. Updates
        ``picked`` in place; returns one record per round."""
        config: SPDYConfig = self.config
        target, tolerance = config.target_speedup, config.speedup_tolerance
        rounds: list[dict[str, Any]] = []
        timed_profiles: list[tuple[list[int], Any]] = []
        with result.timed("corrections"):
            for _ in range(config.speedup_corrections):
                predicted = speedup_of(total, tables, picked)
                timed = time_against_dense(self._profiler, self._database.stitch(model, groups, [lv[i] for lv, i in zip(levels, picked)]), model)
                timed_profiles.append((list(picked), timed))
                rounds.append({"predicted_speedup": predicted, "measured_speedup": timed.speedup, "stable": timed.stable})
                if target <= timed.speedup <= target * (1 + tolerance):
                    break
                corrected = corrected_target(target, [(r["predicted_speedup"], r["measured_speedup"]) for r in rounds], tolerance)
                if corrected <= 1:
                    rounds[-1]["note"] = f"the corrected target {corrected:.3f}× is not a speed-up: kept"
                    break
                budget = controlled_budget(total, tables, target_speedup=corrected)
                if budget < fastest:
                    rounds[-1]["note"] = f"the corrected target {corrected:.3f}× is above the reachable {max_speedup(total, tables):.3f}×: kept"
                    break
                rounds[-1]["corrected_target"] = corrected
                picked[:] = solve_profile(tables, found.coefficients, budget, config.num_buckets)
        # end on a timed profile: the slowest one that met the target, else the fastest one
        if timed_profiles and all(p != picked for p, _ in timed_profiles):
            meeting = [(p, t) for p, t in timed_profiles if t.speedup >= target]
            chosen = min(meeting, key=lambda pt: pt[1].speedup) if meeting else max(timed_profiles, key=lambda pt: pt[1].speedup)
            picked[:] = chosen[0]
            rounds.append({"kept_round": next(i for i, (p, _) in enumerate(timed_profiles) if p == chosen[0]), "reason": "the last correction was not timed"})
        self._last_timed = next(((p, t) for p, t in reversed(timed_profiles) if p == picked), None)
        return rounds

    # ------------------------------------------------------------------------------------------ the whole run
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: SPDYConfig = self.config
        measure = config.cost == "latency" and config.measure_speedup
        dense = copy.deepcopy(model) if measure else None
        self._layer_facts: dict[str, dict[str, Any]] = {}
        self._last_timed = None
        result = super().prune(model, adapter, calibration, device=device, disable_tqdm=disable_tqdm)
        spdy = result.info["spdy"]
        if config.cost == "macs":
            spdy["measured_speedup"] = result.info["macs_before"] / result.info["macs_after"] if result.info["macs_after"] else math.inf
            spdy["measured_by"] = "MACs counted on the pruned model"
        elif measure:
            final = [row["level"] for row in spdy["profile"]]
            last = getattr(self, "_last_timed", None)
            if last is not None and last[0] == final:
                timed = last[1]  # the stitched model of these levels is the pruned model: already timed
            else:
                with result.timed("measurement"):
                    timed = time_against_dense(self._profiler, model, dense)
            record_measurement(spdy, timed, model, config.target_speedup)
        summarise(result, spdy)
        return result


# ------------------------------------------------------------------------------------------ output
def _spdy_info(source: Any) -> dict[str, Any]:
    result = getattr(source, "pruning_result", source)
    info = result.info if hasattr(result, "info") else (result or {}).get("info", {})
    if not isinstance(info, dict) or "spdy" not in info:
        raise PruningConfigError("this model (or result) was not pruned by SPDY: it records no SPDY profile.")
    return info["spdy"]


def profile_table(source: Any) -> str:
    """The per-group (or per-layer, for sparsity levels) profile of an SPDY run as a Markdown table (``source``: the
    pruned model, its ``pruning_result`` or that result's ``to_dict()``)."""
    spdy = _spdy_info(source)
    unit = spdy["unit"]
    levels = "levels" in spdy  # sparsity levels (an unstructured base) rather than widths
    if levels:
        lines = [f"| layer | kind | sparsity | level | {unit} | dense {unit} |", "|---|---|---:|---:|---:|---:|"]
        for row in spdy["profile"]:
            lines.append(f"| {row['name']} | {row['kind']} | {row['sparsity']:.4f} | {row['level']} | {row['cost']:.4g} | {row['dense_cost']:.4g} |")
    else:
        lines = [f"| group | kind | width | dense | level | {unit} | dense {unit} |", "|---|---|---:|---:|---:|---:|---:|"]
        for row in spdy["profile"]:
            lines.append(f"| {row['name']} | {KIND_NOUNS.get(row['kind'], row['kind'])} | {row['width']} | {row['dense_width']} | {row['level']} | {row['cost']:.4g} | {row['dense_cost']:.4g} |")
    measured = spdy.get("measured_speedup")
    lines.append("")
    lines.append(
        f"Target {spdy['target_speedup'] or spdy['target_cost']}; predicted speed-up {spdy['predicted_speedup']:.3f}×"
        + (f", measured {measured:.3f}× ({spdy.get('measured_by')})" if measured is not None else "")
        + f"; {spdy['uncontrolled_fraction']:.1%} of the dense {unit} is outside the pruned {'layers' if levels else 'groups'}."
    )
    return "\n".join(lines) + "\n"


def save_profile(model: nn.Module, directory: str | os.PathLike) -> dict[str, Path]:
    """Write an SPDY-pruned model's profile into ``directory``: ``spdy_profile.json`` (the ``info["spdy"]`` record),
    ``spdy_profile.md`` (:func:`profile_table`) and ``spdy_profile.png`` (the per-layer chart of the model card,
    when matplotlib is installed). Returns the paths written."""
    spdy = _spdy_info(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "spdy_profile.json", "table": directory / "spdy_profile.md"}
    paths["json"].write_text(json.dumps(spdy, indent=1, default=str), encoding="utf-8")
    paths["table"].write_text(profile_table(model), encoding="utf-8")
    summary = sparsity_report(model).to_dict()
    summary["pruning"] = model.pruning_result.to_dict()
    if render_sparsity_chart(summary, directory / "spdy_profile.png"):
        paths["chart"] = directory / "spdy_profile.png"
    return paths
