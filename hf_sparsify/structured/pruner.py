"""``StructuredPruner``: the flow every structured method shares, so that a method is a score (and an optional fold).

1. :meth:`StructuredPruner.select`: the structure groups of the method's kinds (MLP neurons, attention heads,
   ConvNeXt channels), filtered by the config's ``targets`` / ``ignore`` (:func:`~.groups.select_groups`).
2. :meth:`StructuredPruner.score`: **the method** — one score per unit (higher = more important), e.g. VBP's
   activation variances or SOSP's second-order saliencies.
3. :meth:`StructuredPruner.allocate`: widths meeting the method's :class:`Allocation` (a :class:`Budget` in units,
   parameters or MACs; a global threshold on comparable scores, the same ratio per group, or a dynamic programme
   over a :class:`~.costs.CostModel`'s tables; ``min_per_layer`` and ``round_to`` per kind).
4. Surgery: every group keeps its highest-scored units (:func:`~.allocation.kept_units`); the removed units'
   :meth:`StructuredPruner.fold_values` (e.g. VBP's means), if any, are folded into the consumer's bias
   (:func:`~.shrink.shrink_group`).
5. The result: per group its width, dense width and the method's facts; ``info`` with MACs and parameters before
   and after; ``summary`` with the fractions of neurons / heads, MACs and parameters removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON, ModelAdapter, StructureGroup
from ..configuration import PruningConfigError
from ..methods.base import Pruner, PruningResult
from ..utils import get_logger
from .allocation import (
    NORMALIZATIONS,
    UnreachableBudgetError,
    allowed_widths,
    kept_units,
    normalize_scores,
    per_cost,
    plan_dp,
    plan_global,
    plan_per_layer,
    plan_per_layer_for_target,
    removal_errors,
    removed_cost,
)
from .costs import CostModel, LinearCostModel, MacsCost, ParamsCost, UnitsCost, attention_query_modules, count_params
from .groups import KIND_NOUNS, group_output_scale, resolve_kinds, select_groups
from .shrink import removed_units, shrink_group

__all__ = ["ALLOCATION_STRATEGIES", "BUDGET_UNITS", "Allocation", "Budget", "StructuredPruner"]

logger = get_logger(__name__)

#: what a budget counts: the selected groups' units, or the whole model's parameters or MACs per image
BUDGET_UNITS = ("units", "parameters", "macs")
#: how a budget is spread over the groups
ALLOCATION_STRATEGIES = ("global", "per_layer", "dp")
_DEFAULT_ROUND_TO = {MLP_NEURON: 8, CONV_CHANNEL: 8, ATTENTION_HEAD: 1}
_DEFAULT_MIN = {MLP_NEURON: 1, CONV_CHANNEL: 1, ATTENTION_HEAD: 1}
_COST_LABELS = {"macs": "MACs", "parameters": "parameters"}


@dataclass
class Budget:
    """How much a structured method removes.

    Attributes:
        amount: the fraction removed, in [0, 1).
        unit: ``"units"``: of the selected groups' units (neurons, heads, channels: each counts 1);
            ``"parameters"`` / ``"macs"``: of the whole model's parameters / MACs per image. A subclass whose
            :meth:`StructuredPruner.cost_model` knows more units (measured latency) may use them.
        field: the config field that set it, named in messages (``"pruning_ratio"``).
    """

    amount: float
    unit: str = "units"
    field: str = "pruning_ratio"


@dataclass
class Allocation:
    """How the budget is spread over the groups.

    Attributes:
        budget: the :class:`Budget`.
        strategy: ``"global"``: one threshold on the scores made comparable across groups and kinds by
            ``normalization`` (groups end up with different widths); ``"per_layer"``: the same ratio in every group
            (for a cost budget, the common ratio that meets it); ``"dp"``: the widths minimising the summed removed
            scores (normalised as for ``"global"``) with the cost within budget, by dynamic programming over the cost
            model's tables (costs need not be linear in the width).
        normalization: how each group's scores are made comparable (:func:`~.allocation.normalize_scores`):
            ``"output"`` multiplies by the group's :func:`~.groups.group_output_scale` (scores in units of the
            residual stream's variance: right for per-row variances of any kind), ``"mean"`` / ``"max"`` divide by
            the group's own mean / max (ranks kinds by their relative standing only), ``"none"`` for scores that
            are already comparable (estimated loss changes, as SOSP's).
        rank_per_cost: divide the scores by the unit's cost in the budget's unit before the global threshold (the
            units removed are those with the least score per MAC / parameter saved).
        round_to: kept widths are multiples of this (or the full width): one value for every kind, or per kind
            (default 8 for neurons and channels, 1 for heads).
        min_per_layer: every group keeps at least this many units (rounded up to ``round_to``): one value for every
            kind, or per kind (default 1: at least one head per attention, one neuron per MLP).
        min_field, round_field: the config fields that set those, named in messages.
    """

    budget: Budget
    strategy: str = "global"
    normalization: str = "none"
    rank_per_cost: bool = False
    round_to: int | Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_ROUND_TO))
    min_per_layer: int | Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_MIN))
    min_field: str = "min_per_layer"
    round_field: str = "round_to"

    def __post_init__(self) -> None:
        if self.strategy not in ALLOCATION_STRATEGIES:
            raise PruningConfigError(f"allocation strategy {self.strategy!r} is not one of {list(ALLOCATION_STRATEGIES)}.")
        if self.normalization not in NORMALIZATIONS:
            raise PruningConfigError(f"normalization {self.normalization!r} is not one of {list(NORMALIZATIONS)}.")
        if not 0 <= self.budget.amount < 1:
            raise PruningConfigError(f"{self.budget.field} must be in [0, 1) (the fraction removed), got {self.budget.amount}.")

    def round_for(self, kind: str) -> int:
        """``round_to`` of a kind."""
        return self.round_to if isinstance(self.round_to, int) else int(self.round_to.get(kind, _DEFAULT_ROUND_TO[kind]))

    def min_for(self, kind: str) -> int:
        """``min_per_layer`` of a kind."""
        return self.min_per_layer if isinstance(self.min_per_layer, int) else int(self.min_per_layer.get(kind, _DEFAULT_MIN[kind]))


def _unit_label(kinds: Sequence[str]) -> str:
    kinds = set(kinds)
    if kinds <= {MLP_NEURON, CONV_CHANNEL}:
        return "neurons"
    return "heads" if kinds == {ATTENTION_HEAD} else "structures"


class StructuredPruner(Pruner):
    """Base of the structured methods: a subclass implements :meth:`score` (and :meth:`allocation`, usually from
    its config's fields), optionally :meth:`fold_values`, :meth:`prepare` and :meth:`describe_removal`; the
    selection of groups, costs, allocation, surgery and result record are shared (see the module docstring).

    Class attributes:
        title: the method's display name in messages (``"VBP"``).
        structure_kinds: the kinds it prunes (aliases ``"mlp"``, ``"heads"``, ``"channels"``); a kind the model
            lacks is skipped unless ``require_every_kind``.
        score_phase: the name of the scoring phase in ``result.timings``.
    """

    needs_calibration_data: ClassVar[bool] = True
    changes_shapes: ClassVar[bool] = True
    title: ClassVar[str] = "structured pruning"
    structure_kinds: ClassVar[tuple[str, ...]] = ("mlp", "channels")
    require_every_kind: ClassVar[bool] = False
    score_phase: ClassVar[str] = "scores"

    # ------------------------------------------------------------------------------------------ to implement
    def allocation(self) -> Allocation:
        """The budget and how it is spread, from the config."""
        raise NotImplementedError

    def score(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        groups: list[StructureGroup],
        calibration,
        *,
        device: torch.device,
        disable_tqdm: bool,
        result: PruningResult,
    ) -> dict[str, torch.Tensor]:
        """One score per unit of every group (``{group.name: tensor of num_units}``); higher = more important.
        Inside a group the lowest scores are removed first; across groups scores are compared after the
        allocation's normalisation."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ optional hooks
    def kinds(self) -> list[str]:
        """The structure kinds this run prunes (default: the class's ``structure_kinds``)."""
        return resolve_kinds(self.structure_kinds)

    def prepare(self, model: nn.Module, adapter: ModelAdapter, groups: list[StructureGroup], calibration) -> None:
        """Checks and decisions before any work (refuse a bad combination, decide on a fold)."""

    def fold_values(self, model: nn.Module, group: StructureGroup) -> torch.Tensor | None:
        """One value per row of ``group`` that replaces a removed unit's output (folded into the consumer's bias),
        or ``None`` to just remove the units."""
        return None

    def describe_removal(self, model: nn.Module, group: StructureGroup, keep: torch.Tensor, removed: torch.Tensor) -> dict[str, Any]:
        """Method facts about one group's removal, recorded in ``result.layers`` (called before the surgery)."""
        return {}

    def comparable_scores(self, model: nn.Module, group: StructureGroup, scores: torch.Tensor, allocation: Allocation) -> torch.Tensor:
        """The group's scores made comparable across groups and kinds (the allocation's ``normalization``)."""
        scale = group_output_scale(model, group) if allocation.normalization == "output" else None
        return normalize_scores(scores, allocation.normalization, scale)

    def cost_model(self, unit: str, groups: Sequence[StructureGroup], adapter: ModelAdapter) -> CostModel:
        """The cost model of a budget unit (override to add one: SPDY's measured latency)."""
        if unit == "units":
            return UnitsCost(groups)
        if unit == "macs":
            return MacsCost(attention_query_modules(adapter))
        if unit == "parameters":
            return ParamsCost()
        raise PruningConfigError(f"{self.title} has no cost model for budget unit {unit!r}; use one of {list(BUDGET_UNITS)}.")

    # ------------------------------------------------------------------------------------------ the flow
    def select(self, adapter: ModelAdapter) -> list[StructureGroup]:
        """The groups this run prunes."""
        return select_groups(
            adapter, self.kinds(), self.config.targets, self.config.ignore, method=self.title, require_every_kind=self.require_every_kind
        )

    def plan(self, model: nn.Module, adapter: ModelAdapter, *, device: torch.device | str | None = None) -> list[str]:
        groups = self.select(adapter)
        allocation = self.allocation()
        units = sum(g.num_units for g in groups)
        budget = allocation.budget
        what = f"{budget.amount:.0%} of the " + ("selected units" if budget.unit == "units" else f"model's {_COST_LABELS.get(budget.unit, budget.unit)}")
        return [f"{self.title}: {units:,} {_unit_label([g.kind for g in groups])} in {len(groups)} groups; removes {what} ({allocation.strategy} allocation)"]

    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        result = PruningResult(method=self.config.method)
        groups = self.select(adapter)
        self.prepare(model, adapter, groups, calibration)
        with result.timed(self.score_phase):
            scores = self.score(model, adapter, groups, calibration, device=device, disable_tqdm=disable_tqdm, result=result)
        allocation = self.allocation()
        macs = MacsCost(attention_query_modules(adapter))
        with result.timed("selection"):
            macs_before, params_before = macs.total(model), count_params(model)
            widths = self.allocate(model, adapter, groups, scores, allocation, result)
            keeps = [kept_units(scores[g.name], w) for g, w in zip(groups, widths)]

        with torch.no_grad(), result.timed("surgery"):
            for group, keep in zip(groups, keeps):
                dense = group.num_units
                removed = removed_units(dense, keep)
                facts = self.describe_removal(model, group, keep, removed)
                shrink_group(model, group, keep, self.fold_values(model, group))
                result.layers[group.name] = {"kind": group.kind, "width": group.num_units, "dense_width": dense, "removed": int(removed.numel()), **facts}

        macs_after, params_after = macs.total(model), count_params(model)
        result.info.update(
            {
                "allocation": allocation.strategy,
                "macs_before": int(macs_before),
                "macs_after": int(macs_after),
                "macs_reduction": 1 - macs_after / macs_before if macs_before else 0.0,
                "params_before": int(params_before),
                "params_after": int(params_after),
                "params_reduction": 1 - params_after / params_before if params_before else 0.0,
            }
        )
        result.summary = self.summarize(result)
        return result

    def summarize(self, result: PruningResult) -> dict[str, Any]:
        """The figures the CLI prints: fractions of the pruned groups' neurons (channels included) and heads removed,
        and of the model's MACs and parameters removed."""
        summary: dict[str, Any] = {}
        for key, kinds in (("neurons_removed", {MLP_NEURON, CONV_CHANNEL}), ("heads_removed", {ATTENTION_HEAD})):
            layers = [r for r in result.layers.values() if r["kind"] in kinds]
            dense = sum(r["dense_width"] for r in layers)
            if dense:
                summary[key] = round(sum(r["removed"] for r in layers) / dense, 6)
        summary["macs_reduction"] = round(result.info["macs_reduction"], 6)
        summary["params_reduction"] = round(result.info["params_reduction"], 6)
        return summary

    # ------------------------------------------------------------------------------------------ allocation
    def allocate(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        groups: list[StructureGroup],
        scores: Mapping[str, torch.Tensor],
        allocation: Allocation,
        result: PruningResult,
    ) -> list[int]:
        """The kept width of every group (see :class:`Allocation`); records ``result.info["target"]``."""
        budget = allocation.budget
        sizes = [g.num_units for g in groups]
        rounds = [allocation.round_for(g.kind) for g in groups]
        minimums = [allocation.min_for(g.kind) for g in groups]
        options = [allowed_widths(n, r, m) for n, r, m in zip(sizes, rounds, minimums)]
        cost = self.cost_model(budget.unit, groups, adapter)
        total = cost.total(model)
        target = budget.amount * total
        label = _unit_label([g.kind for g in groups]) if budget.unit == "units" else _COST_LABELS.get(budget.unit, budget.unit)
        linear = isinstance(cost, LinearCostModel)
        unit_costs = cost.unit_costs(model, groups) if linear else None
        # the cost of every group at every allowed width
        tables = [[float(w) * c for w in o] for o, c in zip(options, unit_costs)] if linear else cost.group_costs(model, groups, options)

        if allocation.strategy == "per_layer":
            if budget.unit == "units":
                widths = plan_per_layer(sizes, budget.amount, rounds, minimums)
            elif linear:
                widths, ratio = plan_per_layer_for_target(sizes, unit_costs, target, rounds, minimums)
                result.info["per_layer_ratio"] = ratio
            else:
                raise PruningConfigError(f"'per_layer' allocation needs a cost linear in the width; use 'dp' with {budget.unit!r}.")
        else:
            comparable = [self.comparable_scores(model, g, scores[g.name], allocation) for g in groups]
            if allocation.strategy == "global":
                if not linear:
                    raise PruningConfigError(f"'global' allocation needs a cost linear in the width; use 'dp' with {budget.unit!r}.")
                if allocation.rank_per_cost:
                    comparable = per_cost(comparable, unit_costs)
                widths = plan_global(comparable, unit_costs, target, rounds, minimums)
            else:
                errors = [removal_errors(s, o) for s, o in zip(comparable, options)]
                keep_budget = sum(table[0] for table in tables) - target
                try:
                    picked = plan_dp(tables, errors, keep_budget)
                except UnreachableBudgetError:
                    picked = [len(o) - 1 for o in options]  # the smallest widths: reported as unreachable below
                widths = [o[i] for o, i in zip(options, picked)]

        self._check_not_everything(adapter, groups, widths, budget, allocation, label, target)
        if budget.unit != "units":
            most = sum(table[0] - min(table) for table in tables)
            if total and budget.amount > most / total + 0.005:
                raise PruningConfigError(
                    f"{budget.field}={budget.amount} cannot be reached: removing {self._units_description(groups)} "
                    f"(keeping at least {allocation.min_field}={self._describe(allocation.min_for, groups)} per group, widths multiples of "
                    f"{allocation.round_field}={self._describe(allocation.round_for, groups)}) removes at most {most / total:.1%} of this "
                    f"model's {label}. Lower the target or {allocation.min_field}."
                )

        achieved = sum(tables[k][0] - tables[k][options[k].index(w)] for k, w in enumerate(widths))
        if budget.unit != "units" and abs(achieved - target) > 0.01 * total:
            logger.warning(
                f"{self.title}: widths multiple of {allocation.round_field}={self._describe(allocation.round_for, groups)} remove "
                f"{achieved / total:.1%} of the {label} (target {budget.amount:.1%})."
            )
        result.info["target"] = {"budget": label, "target": target, "achieved": achieved}
        return widths

    def _check_not_everything(self, adapter, groups, widths, budget, allocation, label, target) -> None:
        selected = {g.name for g in groups}
        for kind in dict.fromkeys(g.kind for g in groups):
            untouched = sum(g.num_units for g in adapter.structure_groups([kind]) if g.kind == kind and g.name not in selected)
            kept = sum(w for g, w in zip(groups, widths) if g.kind == kind)
            if kept + untouched == 0:
                raise PruningConfigError(
                    f"This {self.title} configuration would delete every {KIND_NOUNS[kind]} of the model ({label} target {target:,.0f}); "
                    f"lower {budget.field} or raise {allocation.min_field}."
                )

    @staticmethod
    def _describe(per_kind, groups) -> str:
        values = {KIND_NOUNS[g.kind]: per_kind(g.kind) for g in groups}
        distinct = set(values.values())
        return str(distinct.pop()) if len(distinct) == 1 else ", ".join(f"{v} per {k}" for k, v in values.items())

    @staticmethod
    def _units_description(groups) -> str:
        return " and ".join(KIND_NOUNS[k] + "s" for k in dict.fromkeys(g.kind for g in groups))
