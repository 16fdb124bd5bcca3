"""SOSP-H and SOSP-I (Nonnenmacher, Pfeil, Steinwart, Reeb, ICLR 2022) on the shared structured-pruning core
(:mod:`hf_sparsify.structured`) and the gradient engine (:mod:`hf_sparsify.observers.gradients`): SOSP is a score.

1. **Gates** (:class:`~hf_sparsify.observers.gates.StructureGates`): every selected structure — MLP neuron, attention
   head, ConvNeXt channel — is gated on its outgoing (consumer) weights, so gate-space derivatives are exact
   projections of the parameter-space ones: ``g_s = θ_sᵀ∇L``, ``G_st = θ_sᵀHθ_t``.
2. **Curvature**, averaged over the calibration images, sharded over the processes of ``accelerate launch``:
   SOSP-H takes ``g`` and one Hessian-vector product ``G·1`` (double backward, or a Gauss–Newton-vector product);
   SOSP-I the ``S × S`` Gauss–Newton matrix (memory checked before any work).
3. **Saliency** (:mod:`.saliency`): a loss change, so neurons, heads and channels of every layer compare on one
   scale (normalisation ``"none"`` in the core).
4. **Global selection** by the core (one threshold, or a dynamic programme) for a budget in structures, parameters or
   MACs, with per-layer minimums (one head per attention, ``min_neurons_per_layer`` per MLP) and kernel-friendly
   widths; then the surgery. ``iterative_steps`` repeats 2–4 on the pruned model.
"""

from __future__ import annotations

from typing import Any

import torch

from ...adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON, StructureGroup
from ...configuration import PruningConfigError
from ...data import CalibrationDataError
from ...observers.distributed import distributed_state
from ...observers.gates import GateCurvature, GateError, GateGaussNewton, StructureGates, gauss_newton_bytes
from ...observers.gradients import GradientError, run_gradients
from ...structured import Allocation, Budget, LinearCostModel, StructuredPruner, allowed_widths, resolve_kinds
from ...structured.groups import KIND_NOUNS
from ...utils import get_logger
from ...utils.memory import available_memory, format_bytes
from ..base import PruningError, PruningResult
from .config import CUSTOM_LOSS, SOSPConfig, SOSPHConfig, SOSPIConfig
from .saliency import predicted_loss_change, sosp_h_saliency, sosp_i_saliency

__all__ = ["SOSPPruner"]

logger = get_logger(__name__)

_CORE_UNITS = {"structures": "units", "parameters": "parameters", "macs": "macs"}
_BUDGET_LABELS = {"units": "structures", "parameters": "parameters", "macs": "MACs"}


class SOSPPruner(StructuredPruner):
    """SOSP-H (``SOSPHConfig``) and SOSP-I (``SOSPIConfig``) on the structured core (see the module docstring and
    docs/sosp.md)."""

    config_class = SOSPConfig
    title = "SOSP"
    structure_kinds = ("mlp", "heads", "channels")
    score_phase = "saliency"

    def __init__(self, config: SOSPConfig):
        super().__init__(config)
        self.title = "SOSP-H" if isinstance(config, SOSPHConfig) else "SOSP-I"
        # kinds the user names must exist; by default every kind the model has is pruned
        self.require_every_kind = config.structures is not None
        self._amount = config.pruning_ratio
        self._facts: dict[str, Any] = {}

    @property
    def _second_order_pairs(self) -> bool:
        return isinstance(self.config, SOSPIConfig)

    # ------------------------------------------------------------------------------------------ the core's hooks
    def kinds(self) -> list[str]:
        return resolve_kinds(self.config.structures or self.structure_kinds)

    def allocation(self) -> Allocation:
        config: SOSPConfig = self.config
        return Allocation(
            Budget(self._amount, _CORE_UNITS[config.budget_unit], field="pruning_ratio"),
            strategy=config.allocation,
            normalization="none",  # every saliency is a loss change: comparable across layers and kinds as it is
            rank_per_cost=config.rank_per_cost,
            round_to={MLP_NEURON: config.round_to, CONV_CHANNEL: config.round_to, ATTENTION_HEAD: 1},
            min_per_layer={MLP_NEURON: config.min_neurons_per_layer, CONV_CHANNEL: config.min_neurons_per_layer, ATTENTION_HEAD: config.min_heads_per_layer},
            min_field="min_heads_per_layer / min_neurons_per_layer",
        )

    def plan(self, model, adapter, *, device=None) -> list[str]:
        """The structures, the budget and the curvature pass, before any gradient.

        Raises:
            PruningError: SOSP-I's ``S × S`` matrix does not fit on ``device`` (default: the model's).
        """
        lines = super().plan(model, adapter, device=device)
        config: SOSPConfig = self.config
        groups = self.select(adapter)
        size = sum(g.num_units for g in groups)
        images = config.calibration_images()
        loss = config.loss if isinstance(config.loss, str) else CUSTOM_LOSS
        if isinstance(config, SOSPHConfig):
            what = f"gradient + {'Hessian' if config.hessian == 'exact' else 'Gauss–Newton'}-vector product in gate space"
        else:
            dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
            what = f"gradient + {size:,}×{size:,} Gauss–Newton matrix ({format_bytes(gauss_newton_bytes(size, dtype))}, {str(dtype).replace('torch.', '')})"
            self._check_memory(model, groups, device)
        rounds = f", {config.iterative_steps} rounds" if config.iterative_steps > 1 else ""
        lines.append(f"{self.title}: {what} over {images:,} images (loss={loss!r}){rounds}")
        return lines

    def prepare(self, model, adapter, groups, calibration) -> None:
        config: SOSPConfig = self.config
        config.check_loss_is_usable()
        if calibration is None:
            raise CalibrationDataError(f"{config.method} reads calibration data: pass calibration_data= to prune().")
        if config.loss == "labels" and calibration.has_labels is False:
            raise CalibrationDataError(config.missing_labels_message())
        if self._second_order_pairs:
            self._check_memory(model, groups)

    def curvature(self, model, groups, calibration, *, device, disable_tqdm, timings) -> dict[str, Any]:
        """One pass of the gradient engine over the calibration data with the gates on ``groups``: ``{"gradient": g,
        "curvature": G·1 (SOSP-H) or the S × S Gauss–Newton matrix (SOSP-I), "num_images", "num_batches",
        "directions"}``, averaged over images and processes."""
        config: SOSPConfig = self.config
        pairs = self._second_order_pairs
        try:
            with StructureGates(model, groups, per_sample=pairs, capture_outputs=pairs or config.hessian == "gauss_newton") as gates:
                if pairs:
                    observer = GateGaussNewton(gates, samples=config.gn_samples, seed=config.seed)
                else:
                    observer = GateCurvature(gates, curvature=config.hessian)
                run = run_gradients(
                    model, _batches(calibration), observer, loss=config.loss, device=device, seed=config.seed, timings=timings,
                    desc=f"{config.method} curvature", disable_tqdm=disable_tqdm,
                )  # fmt: skip
        except (GradientError, GateError) as err:
            raise PruningError(f"{self.title} could not compute its curvature: {err}") from None
        return {
            "gradient": observer.gradient,
            "curvature": observer.gauss_newton if pairs else observer.hessian_vector,
            "num_images": run.num_images,
            "num_batches": run.num_batches,
            "directions": observer.directions if pairs else None,
        }

    def score(self, model, adapter, groups, calibration, *, device, disable_tqdm, result) -> dict[str, torch.Tensor]:
        config: SOSPConfig = self.config
        stats = self.curvature(model, groups, calibration, device=device, disable_tqdm=disable_tqdm, timings=result.timings)
        gradient, curvature = stats["gradient"], stats["curvature"]
        if self._second_order_pairs:
            saliency = sosp_i_saliency(gradient, curvature, first_order=config.first_order)
        else:
            saliency = sosp_h_saliency(gradient, curvature, form=config.saliency, first_order=config.first_order)
        if not bool(torch.isfinite(saliency).all()):
            raise PruningError(
                f"{self.title}'s saliencies are not finite (the {config.loss!r} loss or its curvature overflowed in "
                f"{str(next(model.parameters()).dtype).replace('torch.', '')}): prune a float32 copy of the model."
            )
        self._groups, self._gradient, self._curvature, self._saliency = groups, gradient, curvature, saliency.cpu()
        self._removed: dict[str, torch.Tensor] = {}
        self._facts = {
            "num_structures": int(gradient.numel()),
            "num_calibration_samples": stats["num_images"],
            "num_batches": stats["num_batches"],
        }
        if self._second_order_pairs:
            self._facts["gauss_newton_bytes"] = gauss_newton_bytes(int(gradient.numel()), curvature.dtype)
            self._facts["gauss_newton_directions"] = stats["directions"]
        return {g.name: s for g, s in zip(groups, self._saliency.split([g.num_units for g in groups]))}

    def describe_removal(self, model, group: StructureGroup, keep: torch.Tensor, removed: torch.Tensor) -> dict[str, Any]:
        self._removed[group.name] = removed.clone()
        index = next(i for i, g in enumerate(self._groups) if g.name == group.name)
        start = sum(g.num_units for g in self._groups[:index])
        saliency = self._saliency[start : start + group.num_units]
        return {
            "removed_saliency": float(saliency[removed].sum()) if removed.numel() else 0.0,
            "kept_saliency": float(saliency[keep].sum()) if keep.numel() else 0.0,
        }

    # ------------------------------------------------------------------------------------------ the flow
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: SOSPConfig = self.config
        groups = self.select(adapter)
        self._check_reachable(model, adapter, groups)
        if config.iterative_steps == 1:
            result = self._round(model, adapter, calibration, device=device, disable_tqdm=disable_tqdm)
            rounds = [dict(self._round_facts(result))]
        else:
            result, rounds = self._iterate(model, adapter, calibration, groups, device=device, disable_tqdm=disable_tqdm)
        result.info.update(
            {
                "variant": config.method,
                "saliency": config.saliency if isinstance(config, SOSPHConfig) else "|g| + ½Σ|G|",
                "curvature": config.hessian if isinstance(config, SOSPHConfig) else "gauss_newton_matrix",
                "loss": config.loss if isinstance(config.loss, str) else CUSTOM_LOSS,
                "first_order": config.first_order,
                "budget_unit": config.budget_unit,
                "iterative_steps": config.iterative_steps,
                "num_processes": distributed_state().num_processes,
                **{k: v for k, v in rounds[0].items() if k in ("num_structures", "num_calibration_samples", "gauss_newton_bytes", "gauss_newton_directions")},
            }
        )
        if self._second_order_pairs:
            result.info["predicted_loss_change"] = sum(r["predicted_loss_change"] for r in rounds)
        if config.iterative_steps > 1:
            result.info["rounds"] = rounds
        return result

    def _round(self, model, adapter, calibration, *, device, disable_tqdm) -> PruningResult:
        return super().prune(model, adapter, calibration, device=device, disable_tqdm=disable_tqdm)

    def _round_facts(self, result: PruningResult) -> dict[str, Any]:
        facts = dict(self._facts)
        facts["budget_fraction"] = self._amount
        facts["macs_reduction"] = result.info.get("macs_reduction")
        if self._second_order_pairs:
            mask = torch.zeros(self._gradient.numel(), dtype=torch.bool)
            start = 0
            for group in self._groups:
                removed = self._removed.get(group.name)
                if removed is not None and removed.numel():
                    mask[start + removed] = True
                start += group.num_units
            facts["predicted_loss_change"] = float(predicted_loss_change(self._gradient, self._curvature, mask)) if mask.any() else 0.0
        self._curvature = None  # the S × S matrix is not kept past the round
        return facts

    def _iterate(self, model, adapter, calibration, groups, *, device, disable_tqdm) -> tuple[PruningResult, list[dict[str, Any]]]:
        """``iterative_steps`` rounds; round ``r`` removes what brings the model to ``r/k`` of the budget, measured
        against the dense model, with saliencies recomputed on the model the previous rounds left."""
        config: SOSPConfig = self.config
        unit = _CORE_UNITS[config.budget_unit]
        dense_total = self.cost_model(unit, groups, adapter).total(model)
        dense = {g.name: (g.kind, g.num_units) for g in groups}
        merged = PruningResult(method=config.method)
        rounds: list[dict[str, Any]] = []
        first_info: dict[str, Any] = {}
        for step in range(1, config.iterative_steps + 1):
            current = self.select(adapter)
            total = self.cost_model(unit, current, adapter).total(model)
            wanted = config.pruning_ratio * step / config.iterative_steps
            self._amount = max(0.0, 1.0 - (1.0 - wanted) * dense_total / total) if total else 0.0
            result = self._round(model, adapter, calibration, device=device, disable_tqdm=disable_tqdm)
            rounds.append(self._round_facts(result))
            first_info = first_info or dict(result.info)
            for phase, seconds in result.timings.items():
                merged.timings[phase] = merged.timings.get(phase, 0.0) + seconds
            for name, facts in result.layers.items():
                _kind, width = dense[name]
                previous = merged.layers.get(name, {})
                merged.layers[name] = {
                    **facts,
                    "dense_width": width,
                    "removed": width - facts["width"],
                    "removed_saliency": previous.get("removed_saliency", 0.0) + facts.get("removed_saliency", 0.0),
                }
            last_info = result.info
        self._amount = config.pruning_ratio
        merged.info.update(last_info)
        for key in ("macs_before", "params_before"):
            merged.info[key] = first_info[key]
        for before, after, key in (("macs_before", "macs_after", "macs_reduction"), ("params_before", "params_after", "params_reduction")):
            merged.info[key] = 1 - merged.info[after] / merged.info[before] if merged.info[before] else 0.0
        current_total = self.cost_model(unit, self.select(adapter), adapter).total(model)
        merged.info["target"] = {"budget": _BUDGET_LABELS[unit], "target": config.pruning_ratio * dense_total, "achieved": dense_total - current_total}
        merged.summary = self.summarize(merged)
        return merged, rounds

    # ------------------------------------------------------------------------------------------ checks before work
    def _check_reachable(self, model, adapter, groups) -> None:
        """Refuse, before any gradient, a budget the per-layer minimums make unreachable (e.g. one that would remove
        every head of a layer while ``min_heads_per_layer ≥ 1``)."""
        config: SOSPConfig = self.config
        allocation = self.allocation()
        cost = self.cost_model(allocation.budget.unit, groups, adapter)
        if not isinstance(cost, LinearCostModel):  # pragma: no cover - the built-in costs are linear
            return
        total = cost.total(model)
        unit_costs = cost.unit_costs(model, groups)
        most = 0.0
        for group, unit_cost in zip(groups, unit_costs):
            smallest = min(allowed_widths(group.num_units, allocation.round_for(group.kind), allocation.min_for(group.kind)))
            most += (group.num_units - smallest) * unit_cost
        if not total or config.pruning_ratio <= most / total + 0.005:
            return
        kinds = list(dict.fromkeys(g.kind for g in groups))
        guards = []
        if ATTENTION_HEAD in kinds:
            guards.append(f"min_heads_per_layer={config.min_heads_per_layer} per attention")
        if MLP_NEURON in kinds or CONV_CHANNEL in kinds:
            guards.append(f"min_neurons_per_layer={config.min_neurons_per_layer} per block, widths multiples of round_to={config.round_to}")
        allow = []
        if ATTENTION_HEAD in kinds and config.min_heads_per_layer > 0:
            allow.append("min_heads_per_layer=0 (an attention may then lose every head)")
        if (MLP_NEURON in kinds or CONV_CHANNEL in kinds) and config.min_neurons_per_layer > 0:
            allow.append("a lower min_neurons_per_layer")
        label = _BUDGET_LABELS[allocation.budget.unit]
        raise PruningConfigError(
            f"pruning_ratio={config.pruning_ratio} of the {label} cannot be reached: removing {' and '.join(KIND_NOUNS[k] + 's' for k in kinds)} "
            f"while keeping {'; '.join(guards)} removes at most {most / total:.1%} of this model's {label}. Lower pruning_ratio"
            + (f", or allow more removal with {' or '.join(allow)}." if allow else ".")
        )

    def _check_memory(self, model, groups, device=None) -> None:
        """Refuse SOSP-I before any work when its ``S × S`` matrix does not fit on ``device`` (default: the model's;
        ``max_memory_gb`` or 80% of the free memory)."""
        config: SOSPIConfig = self.config
        device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
        size = sum(g.num_units for g in groups)
        needed = gauss_newton_bytes(size, dtype)
        if config.max_memory_gb is not None:
            limit, where = int(config.max_memory_gb * (1 << 30)), f"max_memory_gb={config.max_memory_gb:g}"
        else:
            free = available_memory(device)
            if free is None:
                return
            limit, where = int(free * 0.8), f"80% of the {format_bytes(free)} free on {device}"
        if needed <= limit:
            return
        raise PruningError(
            f"SOSP-I's Gauss–Newton matrix over {size:,} structures ({size:,}² × {torch.finfo(dtype).bits // 8} bytes, "
            f"{str(dtype).replace('torch.', '')}) needs {format_bytes(needed)}, more than {where}. Use SOSP-H "
            "(method 'sosp-h': one Hessian-vector product, memory linear in the structures), prune fewer structures at once "
            "(structures=['heads'], or targets= / ignore= to select layers), run on a device with more memory (device='cpu' "
            "uses host RAM), or raise max_memory_gb if the memory is there."
        )


def _batches(calibration):
    """The calibration batches of one pass: a window of the stream (which the gradient engine shares among processes
    without building the others' batches) when the number of batches is known, else the data itself."""
    if getattr(calibration, "rebatchable", False) and calibration.num_samples and calibration.batch_size:
        return calibration.window(0, -(-calibration.num_samples // calibration.batch_size))
    return calibration
