"""VBP: Variance-Based Pruning with mean-shift compensation (Berisha, Mehnert, Condurache, ICCV 2025), on the
shared structured-pruning core (:mod:`hf_sparsify.structured`): VBP is a score and a fold.

1. **Score**: one pass over the calibration data collects, per MLP hidden neuron, the mean and variance of its
   post-activation value (the input of ``fc2`` / ``down_proj`` / ``pwconv2``), in float64, pooled over
   batch × tokens or batch × height × width (:mod:`hf_sparsify.observers.moments`). The score is the variance.
2. **Allocation** (the core): the neurons of smallest variance go, per layer or with one threshold across layers
   on variances normalised per layer (``global_normalization``), for a neuron ratio or a MACs target, with
   kernel-friendly widths.
3. **Fold**: each removed neuron is replaced by its mean: ``b2 += W2[:, removed] · mean[removed]`` in float64,
   then ``fc1`` rows and ``fc2`` columns are deleted (:func:`hf_sparsify.structured.shrink_group`). LayerScale
   comes after ``fc2``, so the fold stays exact; a SwiGLU neuron is a ``gate_proj``/``up_proj`` row pair. In the
   last block of a model whose head reads only some tokens, the fold uses those tokens' mean
   (``compensation_tokens="head"``).
"""

from __future__ import annotations

import torch

from ...adapters import StructureGroup
from ...configuration import PruningConfigError
from ...data import CalibrationDataError
from ...observers.distributed import distributed_state
from ...observers.moments import Moments, NonFiniteActivationError, collect_activation_moments
from ...structured import Allocation, Budget, StructuredPruner
from ...utils import get_logger
from ..base import PruningError
from .config import VBPConfig

__all__ = ["VBPPruner"]

logger = get_logger(__name__)

HEAD_KEY = "__head_tokens__"  # moments key of the last block's MLP over the tokens the head reads


class VBPPruner(StructuredPruner):
    """VBP on the structured core: scores are post-activation variances of the MLP hidden neurons (ConvNeXt block
    channels), the fold is the removed neurons' mean (see the module docstring and docs/vbp.md)."""

    config_class = VBPConfig
    title = "VBP"
    structure_kinds = ("mlp", "channels")
    score_phase = "statistics"

    def allocation(self) -> Allocation:
        config: VBPConfig = self.config
        if config.target_macs_reduction is not None:
            budget = Budget(config.target_macs_reduction, "macs", field="target_macs_reduction")
        else:
            budget = Budget(config.pruning_ratio, "units", field="pruning_ratio")
        return Allocation(
            budget,
            strategy=config.allocation,
            normalization=config.global_normalization,
            round_to=config.round_to,
            min_per_layer=config.min_neurons_per_layer,
            min_field="min_neurons_per_layer",
        )

    def prepare(self, model, adapter, groups, calibration) -> None:
        config: VBPConfig = self.config
        blocked = [g for g in groups if g.blocks_exact_fold]
        if config.compensation is True and blocked:
            raise PruningConfigError(
                f"VBP's mean-shift compensation is not exact for {blocked[0].name}: {blocked[0].blocks_exact_fold}. "
                "Use VBPConfig(..., compensation=False) to prune this model by variance without the bias fold "
                "(recovery finetuning is then recommended)."
            )
        if calibration is None:
            raise CalibrationDataError("VBP reads calibration data: pass calibration_data= to prune().")
        self._compensate = config.compensation if config.compensation is not None else not blocked
        if blocked and not self._compensate and config.compensation is None:
            logger.warning(f"VBP: no mean-shift fold for this model ({blocked[0].blocks_exact_fold}); removed neurons are dropped.")
        self._head_fold = self._head_fold_group(adapter, groups) if self._compensate else None

    @torch.no_grad()
    def score(self, model, adapter, groups, calibration, *, device, disable_tqdm, result) -> dict[str, torch.Tensor]:
        observed = {g.name: g.observe for g in groups}
        if self._head_fold is not None:  # the last block's mean over the tokens the head reads, in the same pass
            observed[HEAD_KEY] = (self._head_fold.observe, adapter.head_tokens())
        try:
            moments = collect_activation_moments(model, observed, calibration, device=device, disable_tqdm=disable_tqdm)
        except NonFiniteActivationError as err:
            raise PruningError(f"VBP cannot estimate activation statistics: {err}") from None
        _check_enough_data(moments, groups)
        self._moments = moments
        self._fold_means = {g.name: moments[g.name].mean for g in groups}
        if self._head_fold is not None:
            self._fold_means[self._head_fold.name] = moments[HEAD_KEY].mean
        return {g.name: moments[g.name].variance for g in groups}

    def fold_values(self, model, group: StructureGroup) -> torch.Tensor | None:
        return self._fold_means[group.name] if self._compensate else None

    def describe_removal(self, model, group: StructureGroup, keep: torch.Tensor, removed: torch.Tensor) -> dict:
        variance = self._moments[group.name].variance.cpu()
        gone = torch.zeros(variance.numel(), dtype=torch.bool)
        gone[removed] = True
        w2 = model.get_submodule(group.consumers[0]).weight.detach().double().cpu().flatten(1)  # 1x1 Conv2d: (out, in)
        return {
            "removed_variance_fraction": float(variance[gone].sum() / variance.sum()) if variance.sum() > 0 else 0.0,
            "max_removed_variance": float(variance[gone].max()) if gone.any() else None,
            "expected_output_error": float((w2[:, gone].square().sum(0) * variance[gone]).sum()),
        }

    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False):
        result = super().prune(model, adapter, calibration, device=device, disable_tqdm=disable_tqdm)
        config: VBPConfig = self.config
        first = self._moments[next(iter(result.layers))]
        total_units = sum(r["dense_width"] for r in result.layers.values())
        result.info.update(
            {
                "global_normalization": config.global_normalization if config.allocation == "global" else None,
                "compensation": self._compensate,
                "compensation_head_tokens": self._head_fold.name if self._head_fold is not None else None,
                "num_calibration_samples": first.num_samples,
                "values_per_neuron": first.count,
                "num_processes": distributed_state().num_processes,
                "neurons_removed_fraction": sum(r["removed"] for r in result.layers.values()) / total_units,
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


def _check_enough_data(moments: dict[str, Moments], groups: list[StructureGroup]) -> None:
    first = moments[groups[0].name]
    if first.num_samples < 2 or min(m.count for m in moments.values()) < 2:
        raise CalibrationDataError(
            f"VBP estimated activation variances from {first.num_samples} calibration image(s) "
            f"({min(m.count for m in moments.values())} value(s) per neuron): at least 2 images are needed, and "
            "hundreds give reliable variances (the default is 512). Pass more calibration data."
        )
