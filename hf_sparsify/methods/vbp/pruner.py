"""VBP: Variance-Based Pruning with mean-shift compensation (Berisha, Mehnert, Condurache, ICCV 2025).

1. One pass over the calibration data collects, per MLP hidden neuron, the mean and variance of its
   post-activation value (the input of ``fc2`` / ``down_proj`` / ``pwconv2``), in float64, pooled over
   batch × tokens or batch × height × width (:mod:`hf_sparsify.observers.moments`).
2. The neurons of smallest variance are selected (:mod:`.selection`): per layer, or with one threshold across
   layers, for a neuron ratio or a MACs target, with kernel-friendly widths.
3. Each removed neuron is replaced by its mean: ``b2 += W2[:, removed] · mean[removed]``; then ``fc1`` rows and
   ``fc2`` columns are deleted (:mod:`hf_sparsify.surgery.shrink`). LayerScale comes after ``fc2``, so the fold
   stays exact; a SwiGLU neuron is a ``gate_proj``/``up_proj`` row pair.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ...adapters import CONV_CHANNEL, MLP_NEURON, StructureGroup, UnsupportedModelError
from ...configuration import PruningConfigError
from ...data import CalibrationDataError
from ...observers.distributed import distributed_state
from ...observers.moments import Moments, NonFiniteActivationError, collect_activation_moments
from ...surgery import fold_into_bias, keep_units
from ...utils import get_logger
from ..base import Pruner, PruningError, PruningResult
from .config import VBPConfig
from .selection import (
    allowed_widths,
    kept_units,
    normalize_scores,
    output_scale,
    plan_global,
    plan_per_layer,
    plan_per_layer_for_target,
    removed_cost,
)

__all__ = ["VBPPruner", "group_output_scale", "mlp_groups", "shrink_mlp", "unit_macs"]

logger = get_logger(__name__)

HEAD_KEY = "__head_tokens__"  # moments key of the last block's MLP over the tokens the head reads


def mlp_groups(adapter, targets: list[str] | None = None, ignore: list[str] | None = None) -> list[StructureGroup]:
    """The MLP hidden-neuron groups VBP prunes (ConvNeXt block channels included), filtered by ``targets`` /
    ``ignore`` regexes searched in the group's name and its layers' names."""
    if adapter.family == "generic":
        raise UnsupportedModelError(
            f"VBP prunes the MLPs a model adapter knows, and {type(adapter.model).__name__} "
            f"(model_type={getattr(adapter.model.config, 'model_type', None)!r}) has no adapter: "
            "VBP supports ViT, DeiT, DINOv2 and ConvNeXt(V2). targets= only selects among those MLPs."
        )
    groups = adapter.structure_groups([MLP_NEURON, CONV_CHANNEL])
    if not groups:
        raise UnsupportedModelError(f"The {adapter.family} adapter found no MLP in {type(adapter.model).__name__}: there is nothing for VBP to prune.")

    def names(g):
        return [g.name, *g.producers, *g.consumers]

    if targets is not None:
        groups = [g for g in groups if any(re.search(p, n) for p in targets for n in names(g))]
        if not groups:
            raise PruningConfigError(
                f"targets={targets} matched no MLP of this model; VBP prunes MLP hidden neurons, e.g. "
                f"targets=[r'{re.escape(adapter.structure_groups([MLP_NEURON, CONV_CHANNEL])[0].name)}$']."
            )
    if ignore:
        groups = [g for g in groups if not any(re.search(p, n) for p in ignore for n in names(g))]
        if not groups:
            raise PruningConfigError(f"ignore={ignore} excluded every MLP: nothing is left for VBP to prune.")
    return groups


def unit_macs(group: StructureGroup, per_module_macs: dict[str, int]) -> float:
    """MACs per image that one unit of ``group`` costs (its producer rows and consumer columns)."""
    if group.num_units == 0:
        return 0.0
    total = sum(per_module_macs.get(name, 0) for name in [*group.producers, *group.consumers])
    return total / group.num_units


def group_output_scale(model: nn.Module, group: StructureGroup) -> float:
    """:func:`~.selection.output_scale` of a group: its consumer's weight, times its LayerScale if any."""
    gamma = model.get_parameter(group.layer_scale) if group.layer_scale else None
    return output_scale(model.get_submodule(group.consumers[0]).weight, gamma)


@torch.no_grad()
def shrink_mlp(model: nn.Module, group: StructureGroup, keep: torch.Tensor, means: torch.Tensor | None = None) -> StructureGroup:
    """Keep the units ``keep`` of ``group``; with ``means`` (one per unit of the group), first fold the removed
    units' means into the consumer's bias (VBP's mean-shift compensation)."""
    keep = torch.as_tensor(keep, dtype=torch.long).unique(sorted=True)
    if means is not None:
        removed = torch.ones(group.num_units, dtype=torch.bool)
        removed[keep] = False
        units = removed.nonzero().flatten()
        if units.numel():
            fold_into_bias(model, group, units, means.detach().cpu()[units])
    return keep_units(model, group, keep)


class VBPPruner(Pruner):
    config_class = VBPConfig
    needs_calibration_data = True
    changes_shapes = True

    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        from ...report import _query_modules, count_macs

        config: VBPConfig = self.config
        result = PruningResult(method="vbp")
        groups = mlp_groups(adapter, config.targets, config.ignore)
        blocked = [g for g in groups if g.blocks_exact_fold]
        if config.compensation is True and blocked:
            raise PruningConfigError(
                f"VBP's mean-shift compensation is not exact for {blocked[0].name}: {blocked[0].blocks_exact_fold}. "
                "Use VBPConfig(..., compensation=False) to prune this model by variance without the bias fold "
                "(recovery finetuning is then recommended)."
            )
        if calibration is None:
            raise CalibrationDataError("VBP reads calibration data: pass calibration_data= to prune().")
        compensate = config.compensation if config.compensation is not None else not blocked
        if blocked and not compensate and config.compensation is None:
            logger.warning(f"VBP: no mean-shift fold for this model ({blocked[0].blocks_exact_fold}); removed neurons are dropped.")

        observed = {g.name: g.observe for g in groups}
        head_fold = self._head_fold_group(adapter, groups) if compensate else None
        if head_fold is not None:  # the last block's mean over the tokens the head reads, in the same pass
            observed[HEAD_KEY] = (head_fold.observe, adapter.head_tokens())
        with result.timed("statistics"):
            try:
                moments = collect_activation_moments(model, observed, calibration, device=device, disable_tqdm=disable_tqdm)
            except NonFiniteActivationError as err:
                raise PruningError(f"VBP cannot estimate activation statistics: {err}") from None
        _check_enough_data(moments, groups)
        fold_means = {g.name: moments[g.name].mean for g in groups}
        if head_fold is not None:
            fold_means[head_fold.name] = moments[HEAD_KEY].mean

        with result.timed("selection"):
            queries = _query_modules(adapter)
            macs = count_macs(model, queries)
            costs = [unit_macs(g, macs["per_module"]) for g in groups]
            selected = {g.name for g in groups}
            untouched = sum(g.num_units for g in adapter.structure_groups([MLP_NEURON, CONV_CHANNEL]) if g.name not in selected)
            widths = self._plan(model, groups, moments, costs, macs["total"], result, untouched)
            keeps = [kept_units(moments[g.name].variance, w) for g, w in zip(groups, widths)]

        with result.timed("surgery"):
            for group, keep in zip(groups, keeps):
                m = moments[group.name]
                dense = group.num_units
                variance = m.variance.cpu()
                removed = torch.ones(dense, dtype=torch.bool)
                removed[keep] = False
                w2 = model.get_submodule(group.consumers[0]).weight.detach().double().cpu()
                error = float((w2[:, removed].square().sum(0) * variance[removed]).sum())
                shrink_mlp(model, group, keep, fold_means[group.name] if compensate else None)
                result.layers[group.name] = {
                    "width": group.num_units,
                    "dense_width": dense,
                    "removed": int(removed.sum()),
                    "removed_variance_fraction": float(variance[removed].sum() / variance.sum()) if variance.sum() > 0 else 0.0,
                    "max_removed_variance": float(variance[removed].max()) if removed.any() else None,
                    "expected_output_error": error,
                }

        after = count_macs(model, queries)["total"]
        total_units = sum(r["dense_width"] for r in result.layers.values())
        result.info.update(
            {
                "allocation": config.allocation,
                "global_normalization": config.global_normalization if config.allocation == "global" else None,
                "compensation": compensate,
                "compensation_head_tokens": head_fold.name if head_fold is not None else None,
                "num_calibration_samples": moments[groups[0].name].num_samples,
                "values_per_neuron": moments[groups[0].name].count,
                "num_processes": distributed_state().num_processes,
                "neurons_removed_fraction": sum(r["removed"] for r in result.layers.values()) / total_units,
                "macs_before": macs["total"],
                "macs_after": after,
                "macs_reduction": 1 - after / macs["total"],
            }
        )
        return result

    def _head_fold_group(self, adapter, groups) -> StructureGroup | None:
        """The pruned MLP of the model's last block when its fold should use the head's tokens, else None."""
        config: VBPConfig = self.config
        if config.compensation_tokens != "head" or adapter.head_tokens() is None:
            return None
        last_block = len(adapter.blocks()) - 1
        return next((g for g in groups if g.block_index == last_block), None)

    # ------------------------------------------------------------------------------------------- planning

    def _plan(self, model, groups, moments: dict[str, Moments], costs: list[float], total_macs: int, result: PruningResult, untouched: int = 0) -> list[int]:
        config: VBPConfig = self.config
        sizes = [g.num_units for g in groups]
        round_to, min_keep = config.round_to, config.min_neurons_per_layer
        if config.target_macs_reduction is not None:
            unit_costs, target, budget = costs, config.target_macs_reduction * total_macs, "MACs"
        else:
            unit_costs, target, budget = [1.0] * len(groups), config.pruning_ratio * sum(sizes), "neurons"

        if config.allocation == "per_layer" and config.target_macs_reduction is None:
            widths = plan_per_layer(sizes, config.pruning_ratio, round_to, min_keep)
        elif config.allocation == "per_layer":
            widths, ratio = plan_per_layer_for_target(sizes, unit_costs, target, round_to, min_keep)
            result.info["per_layer_ratio"] = ratio
        else:
            scores = [
                normalize_scores(
                    moments[g.name].variance,
                    config.global_normalization,
                    group_output_scale(model, g) if config.global_normalization == "output" else None,
                )
                for g in groups
            ]
            widths = plan_global(scores, unit_costs, target, round_to, min_keep)

        if sum(widths) + untouched == 0:
            raise PruningConfigError(
                f"This VBP configuration would delete every MLP neuron of the model ({budget} target {target:,.0f}); "
                "lower pruning_ratio / target_macs_reduction or raise min_neurons_per_layer."
            )
        achieved = removed_cost(sizes, widths, unit_costs)
        most = removed_cost(sizes, [min(allowed_widths(n, round_to, min_keep)) for n in sizes], unit_costs)
        if config.target_macs_reduction is not None:
            reachable = most / total_macs
            if config.target_macs_reduction > reachable + 0.005:
                raise PruningConfigError(
                    f"target_macs_reduction={config.target_macs_reduction} cannot be reached: removing MLP neurons "
                    f"(keeping at least min_neurons_per_layer={min_keep} per MLP, widths multiples of round_to={round_to}) "
                    f"removes at most {reachable:.1%} of this model's MACs. Lower the target or min_neurons_per_layer."
                )
            if abs(achieved - target) > 0.01 * total_macs:
                logger.warning(
                    f"VBP: widths multiple of round_to={round_to} remove {achieved / total_macs:.1%} of the MACs "
                    f"(target {config.target_macs_reduction:.1%})."
                )
        result.info["target"] = {"budget": budget, "target": target, "achieved": achieved}
        return widths


def _check_enough_data(moments: dict[str, Moments], groups: list[StructureGroup]) -> None:
    first = moments[groups[0].name]
    if first.num_samples < 2 or min(m.count for m in moments.values()) < 2:
        raise CalibrationDataError(
            f"VBP estimated activation variances from {first.num_samples} calibration image(s) "
            f"({min(m.count for m in moments.values())} value(s) per neuron): at least 2 images are needed, and "
            "hundreds give reliable variances (the default is 512). Pass more calibration data."
        )
