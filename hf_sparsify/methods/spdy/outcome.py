"""What both SPDY flows (structure widths in :mod:`.pruner`, sparsity levels in :mod:`.unstructured`) do around the
search, written once: the latency profiler of the configuration, the budget of a target (or the error naming the
largest reachable speed-up), the ``info["spdy"]`` record of a search, and the measured speed-up of the result."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from torch import nn

from ...speed import LatencyProfiler, benchmark
from ...utils import get_logger
from ..base import PruningResult
from .config import SPDYConfig
from .search import (
    SearchResult,
    SPDYTargetError,
    controlled_budget,
    max_speedup,
    speedup_of,
)

__all__ = ["Budgeted", "checked_budget", "latency_profiler", "record_measurement", "search_record", "summarise", "time_against_dense"]

logger = get_logger(__name__)


def latency_profiler(config: SPDYConfig, model: nn.Module, device) -> LatencyProfiler:
    """The profiler of ``config``'s ``profile_*`` settings (device and dtype default to the model's), cached in
    ``latency_cache`` or the default cache folder."""
    return LatencyProfiler(
        device=config.profile_device or device,
        dtype=config.profile_dtype or next(model.parameters()).dtype,
        batch_size=config.profile_batch_size,
        runtime=config.profile_runtime,
        cache=config.latency_cache if config.latency_cache else True,
    )


def time_against_dense(profiler: LatencyProfiler, pruned: nn.Module, dense: nn.Module):
    """``pruned`` timed against ``dense`` by :func:`~hf_sparsify.speed.benchmark` at the profiler's settings."""
    return benchmark(pruned, baseline=dense, device=profiler.device, dtype=profiler.dtype, batch_size=profiler.batch_size, runtime=profiler.runtime)


class Budgeted(NamedTuple):
    """The budget of the controlled parts, the cost outside them, the largest reachable speed-up and the cheapest
    summed cost of the tables."""

    budget: float
    uncontrolled: float
    reachable: float
    fastest: float


def checked_budget(config: SPDYConfig, total: float, tables: Sequence[Sequence[float]], unit: str, *, smallest: str, parts: str, advice: str) -> Budgeted:
    """The budget of ``config``'s target; :class:`SPDYTargetError` when even the cheapest levels exceed it, saying
    ``with every {smallest}`` the model is at most the reachable speed-up, the share of the cost outside the
    pruned ``parts``, and ``advice`` after the largest target to ask for."""
    uncontrolled = total - sum(t[0] for t in tables)
    budget = controlled_budget(total, tables, target_speedup=config.target_speedup, target_cost=config.target_cost)
    reachable = max_speedup(total, tables)
    fastest = sum(min(t) for t in tables)
    if budget < fastest * (1 - 1e-9):
        wanted = f"target_speedup={config.target_speedup:g}" if config.target_speedup is not None else f"target_cost={config.target_cost:g} {unit}"
        raise SPDYTargetError(
            f"{wanted} cannot be reached: with every {smallest} the model is at most {reachable:.3f}× faster ({unit}; "
            f"{uncontrolled / total:.1%} of the dense cost is outside the pruned {parts}). Ask for at most "
            f"target_speedup={math.floor(reachable * 1000) / 1000:g}{advice}"
        )
    return Budgeted(budget, uncontrolled, reachable, fastest)


def search_record(
    config: SPDYConfig,
    result: PruningResult,
    *,
    unit: str,
    total: float,
    tables: Sequence[Sequence[float]],
    budgeted: Budgeted,
    picked: Sequence[int],
    found: SearchResult,
    final_loss: float,
    corrections: list[dict[str, Any]],
    profile: list[dict[str, Any]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write ``result.info["target"]`` and ``result.info["spdy"]`` (returned) for the levels ``picked``;
    ``extra`` (the database's source, the loss, the kind of levels) goes after the base method."""
    uncontrolled = budgeted.uncontrolled
    chosen = sum(t[i] for t, i in zip(tables, picked))
    result.info["target"] = {"budget": unit, "target": budgeted.budget + uncontrolled, "achieved": uncontrolled + chosen}
    spdy = {
        "target_speedup": config.target_speedup,
        "target_cost": config.target_cost,
        "cost": config.cost,
        "unit": unit,
        "base_method": config.base_method,
        **extra,
        "dense_cost": total,
        "uncontrolled_cost": uncontrolled,
        "uncontrolled_fraction": uncontrolled / total if total else 0.0,
        "budget": budgeted.budget + uncontrolled,
        "predicted_cost": uncontrolled + chosen,
        "predicted_speedup": speedup_of(total, tables, picked),
        "max_speedup": budgeted.reachable,
        "uniform_profile_speedup": speedup_of(total, tables, found.uniform_profile),
        "calibration_loss": final_loss,
        "search_loss": found.loss,
        "corrections": corrections,
        "uniform_coefficients_loss": found.uniform_loss,
        "candidates": found.candidates,
        "evaluations": found.evaluations,
        "history": found.history,
        "coefficients": found.coefficients,
        "profile": profile,
    }
    result.info["spdy"] = spdy
    return spdy


def record_measurement(spdy: dict[str, Any], timed, model: nn.Module, target_speedup: float | None) -> None:
    """The pruned model's measured speed-up against the dense one (a :func:`time_against_dense` result) into
    ``spdy`` and onto the model card (``model.pruning_speedups``); with a ``target_speedup``, whether it was met
    (a warning when not)."""
    spdy["measured_speedup"] = timed.speedup
    spdy["measured_by"] = f"hf_sparsify.benchmark against the dense model ({timed.runtime}, batch {timed.batch_size}, {timed.dtype}, interleaved rounds)"
    spdy["measured"] = {"dense_ms": timed.baseline["median_ms"], "pruned_ms": timed.timing["median_ms"], "speedup_paired": timed.speedup_paired, "stable": timed.stable}
    model.pruning_speedups = [timed.card_entry()]
    if target_speedup is not None:
        spdy["target_met"] = timed.speedup >= target_speedup
        if not spdy["target_met"]:
            logger.warning(
                f"SPDY: the pruned model measured {timed.speedup:.3f}× against the dense one, below target_speedup={target_speedup:g} "
                f"(the tables predicted {spdy['predicted_speedup']:.3f}×; savings measured apart need not add up near the largest reachable "
                "speed-up). Ask for a lower target, or allow more speedup_corrections."
            )


def summarise(result: PruningResult, spdy: dict[str, Any]) -> None:
    """The predicted (and measured) speed-up in the figures the CLI prints after pruning."""
    result.summary["predicted_speedup"] = round(spdy["predicted_speedup"], 4)
    if spdy.get("measured_speedup") is not None:
        result.summary["measured_speedup"] = round(spdy["measured_speedup"], 4)
