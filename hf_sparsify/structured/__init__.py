"""The structured-pruning core shared by every structured method (VBP; SOSP and SPDY build on it).

* :mod:`.groups`: structure groups selected by kind (MLP neurons, attention heads, ConvNeXt channels) and name;
* :mod:`.costs`: parameters and MACs per unit of every group (:class:`CostModel`, pluggable: measured latency);
* :mod:`.allocation`: widths from scores and a budget (global threshold, per-layer ratio, dynamic programme;
  ``min_per_layer`` guards, widths rounded to multiples of 8 or 64);
* :mod:`.shrink`: removing units with a bias fold (the physical surgery is :mod:`hf_sparsify.surgery.shrink`);
* :mod:`.pruner`: :class:`StructuredPruner`, the flow: a structured method is a score plus an optional fold;
* :mod:`.bottleneck`: the per-group kept widths a global ranking produced, and its bottleneck candidates.

See docs/structured.md.
"""

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
from .bottleneck import BottleneckReport, BottleneckReportError, BottleneckRow, bottleneck_report
from .costs import (
    CostModel,
    LinearCostModel,
    MacsCost,
    MacsUnavailableError,
    ParamsCost,
    UnitsCost,
    attention_query_modules,
    count_macs,
    count_params,
    macs_unavailable_reason,
)
from .groups import KIND_ALIASES, KIND_NOUNS, group_names, group_output_scale, output_scale, resolve_kinds, select_groups, unit_scores
from .pruner import ALLOCATION_STRATEGIES, BUDGET_UNITS, Allocation, Budget, StructuredPruner
from .shrink import removed_units, shrink_group

__all__ = [
    "ALLOCATION_STRATEGIES",
    "BUDGET_UNITS",
    "KIND_ALIASES",
    "KIND_NOUNS",
    "NORMALIZATIONS",
    "Allocation",
    "BottleneckReport",
    "BottleneckReportError",
    "BottleneckRow",
    "Budget",
    "CostModel",
    "LinearCostModel",
    "MacsCost",
    "MacsUnavailableError",
    "ParamsCost",
    "StructuredPruner",
    "UnitsCost",
    "UnreachableBudgetError",
    "allowed_widths",
    "attention_query_modules",
    "bottleneck_report",
    "count_macs",
    "count_params",
    "group_names",
    "group_output_scale",
    "kept_units",
    "macs_unavailable_reason",
    "normalize_scores",
    "output_scale",
    "per_cost",
    "plan_dp",
    "plan_global",
    "plan_per_layer",
    "plan_per_layer_for_target",
    "removal_errors",
    "removed_cost",
    "removed_units",
    "resolve_kinds",
    "select_groups",
    "shrink_group",
    "unit_scores",
]
