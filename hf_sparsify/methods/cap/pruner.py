"""The CAP, WoodFisher and FastCAP pruners: they wire the config, the adapter's targets, the gradient observer
and the math modules together.

One pruning step (repeated ``num_recomputations`` times with interpolated sparsity):

0. before any work: the plan (gradients × images, passes, Fisher memory), and a clear error when the Fisher does
   not fit in the memory of its device;
1. masked mini-batch gradients of the step's own window of calibration batches → Fisher sums
   (:func:`hf_sparsify.observers.fisher.collect_fisher`, on the gradient engine), per group of layers whose
   Fisher fits in ``max_fisher_memory_gb`` (all layers at once by default);
2. per layer: batched Cholesky inverse (:mod:`.inverse`), then CAP's greedy elimination (:mod:`.elimination`)
   or WoodFisher's saliencies (:mod:`.woodfisher`);
3. selection (:mod:`.selection`): one global threshold, or per layer, or N:M groups;
4. weights rebuilt in float64 (CAP's replay, WoodFisher's summed update) and written back in the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...configuration import PruningConfigError
from ...data import CalibrationDataError
from ...observers.distributed import distributed_state
from ...observers.fisher import BlockLayout, FisherTarget, GradientError, collect_fisher
from ...surgery import check_nm, lowest_k_masks
from ...utils import get_logger, progress, workspace_bytes
from ...utils.memory import available_memory, format_bytes
from ..base import Pruner, PruningError, PruningResult
from .config import (
    CUSTOM_LOSS,
    BlockFisherConfig,
    CAPConfig,
    FastCAPConfig,
    GradientFisherConfig,
    WoodFisherConfig,
)
from .elimination import greedy_eliminate, replay
from .fastcap import fastcap_prune, shared_fisher_factor
from .inverse import InverseInfo, block_fisher_inverse, chunks
from .selection import kept_threshold, nm_remove_mask, num_to_remove, select_counts
from .woodfisher import woodfisher_saliency, woodfisher_update

__all__ = ["CAPPruner", "WoodFisherPruner", "FastCAPPruner"]

logger = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class _StepTarget:
    """Per pruning step: the target, its weight as blocks (float64), and the weights already zero."""

    target: FisherTarget
    blocks: torch.Tensor  # (n, B) float64 on the Fisher device
    already: int


def _layer_groups(targets: list[FisherTarget], size_of, budget: float) -> list[list[FisherTarget]]:
    """Consecutive layers grouped so that each group's Fisher fits in ``budget`` bytes (a layer larger than the
    budget forms its own group)."""
    groups, current, used = [], [], 0
    for t in targets:
        size = size_of(t)
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(t)
        used += size
    groups.append(current)
    return groups


def _round_down(value: float, digits: int = 2) -> float:
    """``value`` rounded down to ``digits`` significant digits (``6.975 → 6.9``, ``0.00293 → 0.0029``); 0 for
    ``value ≤ 0``: a memory budget that is safe to suggest."""
    if value <= 0:
        return 0.0
    quantum = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.floor(value / quantum * (1 + 1e-12)) * quantum:.{digits}g}")


def _as_blocks(target: FisherTarget, device: torch.device) -> torch.Tensor:
    """The target's weight as ``(n, B)`` float64 blocks: the updates are computed in float64 whatever the model's
    dtype, and written back in it."""
    return target.layout.to_blocks(target.weight.detach()).to(device=device, dtype=torch.float64)


class _GradientFisherPruner(Pruner):
    """Shared plumbing: targets and layouts, calibration windows, gradient collection, memory plan, bookkeeping."""

    config_class = GradientFisherConfig
    needs_calibration_data = True
    fisher_mode = "blocks"

    # ---------------------------------------------------------------------------------------------- inputs
    def _check_inputs(self, calibration) -> None:
        config: GradientFisherConfig = self.config
        config.check_loss_is_usable()
        if calibration is None:
            raise CalibrationDataError(f"{config.method} reads calibration data: pass calibration_data=...")
        if config.loss == "labels" and calibration.has_labels is False:
            raise CalibrationDataError(config.missing_labels_message())
        if config.grad_batch_size is not None and not calibration.rebatchable:
            size = calibration.source_batch_size()
            if size is not None and size != config.grad_batch_size:
                raise CalibrationDataError(
                    f"grad_batch_size={config.grad_batch_size} asks for {config.grad_batch_size} images per gradient, but "
                    f"the calibration data comes in batches of {size} that cannot be re-batched (a DataLoader or a list of "
                    f"batches): build it with batch_size={config.grad_batch_size}, pass a datasets.Dataset (cut into any "
                    "batch size), or leave grad_batch_size unset to use its batches."
                )

    def _targets(self, layers) -> list[FisherTarget]:
        config: GradientFisherConfig = self.config
        targets = []
        for layer in layers:
            multiple = 1
            if config.nm is not None:
                try:
                    check_nm(layer.weight.shape, config.nm[1], layer.name)
                except ValueError as err:
                    raise PruningConfigError(str(err)) from None
                multiple = config.nm[1]
            try:
                layout = BlockLayout.for_weight(layer.weight, config.fisher_block_size, multiple_of=multiple, name=layer.name)
            except ValueError as err:
                raise PruningConfigError(str(err)) from None
            if layout.block_size > 4 * config.fisher_block_size:
                logger.warning(
                    f"hf_sparsify: layer {layer.name} ({layout.numel} weights) has no divisor close to fisher_block_size="
                    f"{config.fisher_block_size}; it uses blocks of {layout.block_size}."
                )
            targets.append(FisherTarget(layer.name, layer.weight, layout))
        return targets

    def _window(self, calibration, step: int):
        """The ``gradients`` batches of recomputation ``step`` (0-based): the same on every call, built once per
        call (the earlier steps' batches are skipped without being built)."""
        m = self.config.gradients
        return calibration.window(m * step, m * (step + 1))

    def _collect(self, model, targets, calibration, step, *, device, fisher_device, dtype, result, disable_tqdm, first=True):
        """Fisher sums of ``targets`` over the batches of ``step``; ``first``: the first collection of this step (the
        one whose gradients and images are counted; layer streaming collects the same batches again)."""
        config: GradientFisherConfig = self.config
        desc = f"{config.method} gradients" + (f" (step {step + 1}/{config.num_recomputations})" if config.num_recomputations > 1 else "")
        try:
            stats = collect_fisher(
                model,
                targets,
                self._window(calibration, step),
                loss=config.loss,
                mode=self.fisher_mode,
                device=device,
                fisher_device=fisher_device,
                dtype=dtype,
                mixed_precision=config.mixed_precision,
                seed=config.seed + step,
                desc=desc,
                disable_tqdm=disable_tqdm,
            )
        except GradientError as err:
            raise PruningError(str(err)) from None
        for phase, seconds in stats.timings.items():
            result.timings[phase] = result.timings.get(phase, 0.0) + seconds
        result.info["gradient_passes"] = result.info.get("gradient_passes", 0) + 1
        if first:
            result.info["num_grads"] = stats.num_grads
            result.info["num_calibration_samples"] = result.info.get("num_calibration_samples", 0) + stats.num_images
        return stats

    def _step_sparsity(self, already: int, numel: int, step: int) -> float:
        """Sparsity reached after recomputation ``step`` (0-based), linear from the current level."""
        config: GradientFisherConfig = self.config
        start = already / numel
        return start + (config.sparsity - start) * (step + 1) / config.num_recomputations

    def _nm_quota(self, step: int) -> tuple[int, int] | None:
        config: GradientFisherConfig = self.config
        if config.nm is None:
            return None
        n, m = config.nm
        return m, int(round((m - n) * (step + 1) / config.num_recomputations))

    # ---------------------------------------------------------------------------------------------- plan
    def _fisher_dtype(self) -> torch.dtype:
        return torch.float64

    def _fisher_bytes(self, target: FisherTarget) -> int:
        """Bytes of the target's Fisher sums."""
        b = target.layout.block_size
        entries = target.layout.numel * b if self.fisher_mode == "blocks" else b * b
        return entries * (torch.finfo(self._fisher_dtype()).bits // 8)

    def _fisher_device(self, device) -> torch.device:
        return torch.device(device)

    def _groups(self, targets: list[FisherTarget]) -> list[list[FisherTarget]]:
        return [targets]

    def _passes_per_step(self, num_groups: int) -> int:
        """Gradient passes over a step's batches: one per group of layers (layer streaming)."""
        return num_groups

    def plan(self, model, adapter, *, device=None) -> list[str]:
        """What the run will do, before any gradient: the gradients and images per step, the passes over the data,
        and the Fisher memory with the memory available on its device.

        Raises:
            PruningError: the Fisher store does not fit in the memory of its device (the message gives its size and
                the settings that fit).
        """
        config: GradientFisherConfig = self.config
        device = torch.device(device) if device is not None else next(model.parameters()).device
        targets = self._targets(adapter.select_layers(config.targets, config.ignore))
        numel = sum(t.layout.numel for t in targets)
        groups = self._groups(targets)
        steps = config.num_recomputations
        m, batch = config.gradients, config.effective_batch_size
        passes = steps * self._passes_per_step(len(groups))
        how = "N:M " + config.mask_structure if config.nm else getattr(config, "sparsity_distribution", "uniform")
        lines = [
            f"{config.method}: {len(targets)} layers, {numel:,} weights, sparsity {config.sparsity:g} ({how})",
            f"gradients: {m:,} × {batch} images = {m * batch:,} images per step × {steps} step{'s' * (steps > 1)}; "
            f"{passes} gradient pass{'es' * (passes > 1)}, {passes * m:,} forward/backward passes",
        ]
        lines.append(self._memory_line(targets, groups, self._fisher_device(device)))
        return lines

    def _announce(self, model, adapter, device) -> None:
        """Log the plan (info level) at the start of a run; its memory check raises before any work."""
        for line in self.plan(model, adapter, device=device):
            logger.info(f"hf_sparsify: {line}")

    def _memory_line(self, targets, groups, fisher_device: torch.device) -> str:
        dtype = str(self._fisher_dtype()).replace("torch.", "")
        total = sum(self._fisher_bytes(t) for t in targets)
        largest = max(sum(self._fisher_bytes(t) for t in g) for g in groups)
        shape = "Fisher blocks" if self.fisher_mode == "blocks" else "shared Fisher (one B×B per layer)"
        where = f"{format_bytes(total)} ({dtype})" + (f" in {len(groups)} groups of ≤ {format_bytes(largest)}" if len(groups) > 1 else "")
        available = available_memory(fisher_device)
        self._check_fits(largest, available, fisher_device, targets)
        free = f"; {format_bytes(available)} available" if available is not None else ""
        return f"{shape}: {where} on {fisher_device}{free}"

    def _check_fits(self, needed: int, available: int | None, fisher_device: torch.device, targets) -> None:
        """Raise before any work when the Fisher store (with the engine's workspace) exceeds the free memory."""
        if available is None:
            return
        workspace = workspace_bytes(fisher_device)
        if needed + workspace <= available:
            return
        raise PruningError(self._too_large_message(needed, available, workspace, fisher_device, targets))

    def _too_large_message(self, needed, available, workspace, fisher_device, targets) -> str:
        return (
            f"{self.config.method} needs {format_bytes(needed)} of Fisher statistics on {fisher_device}, which has "
            f"{format_bytes(available)} available: lower fisher_block_size."
        )

    # ---------------------------------------------------------------------------------------------- results
    def _record(self, targets: list[FisherTarget], result: PruningResult, inverse_info: dict[str, InverseInfo], extra: dict[str, dict[str, Any]]) -> None:
        config: GradientFisherConfig = self.config
        for t in targets:
            weight = t.weight.detach()
            entry = {
                "sparsity": float((weight == 0).float().mean().item()),
                "numel": t.layout.numel,
                "fisher_block_size": t.layout.block_size,
                "num_blocks": t.layout.num_blocks,
            }
            info = inverse_info.get(t.name)
            if info is not None and info.redamped_blocks:
                entry["redamped_blocks"] = info.redamped_blocks
                entry["max_extra_damping"] = info.max_extra_damping
            entry.update(extra.get(t.name, {}))
            result.layers[t.name] = entry
        result.info.update(
            {
                "fisher_block_size": config.fisher_block_size,
                "block_sizes_changed": {t.name: t.layout.block_size for t in targets if t.layout.block_size != config.fisher_block_size},
                "num_recomputations": config.num_recomputations,
                "damp": config.damp,
                "fisher_dtype": str(self._fisher_dtype()).replace("torch.", ""),
                "loss": config.loss if isinstance(config.loss, str) else CUSTOM_LOSS,
                "num_processes": distributed_state().num_processes,
            }
        )

    @staticmethod
    @torch.no_grad()
    def _cast(target: FisherTarget, blocks: torch.Tensor) -> torch.Tensor:
        """Float64 ``blocks`` as a tensor of the weight's shape, dtype and device. A kept weight too small for that
        dtype (below float16's 6e-8) becomes the dtype's smallest value of its sign, so that the mask stays the one
        chosen."""
        weight = target.weight
        new = target.layout.from_blocks(blocks).to(weight.device)
        cast = new.to(weight.dtype)
        lost = (cast == 0) & (new != 0)
        if bool(lost.any()):
            info = torch.finfo(weight.dtype)
            smallest = info.smallest_normal * info.eps  # the smallest subnormal
            cast[lost] = torch.where(new[lost] > 0, smallest, -smallest).to(weight.dtype)
        return cast

    @classmethod
    @torch.no_grad()
    def _write(cls, target: FisherTarget, blocks: torch.Tensor) -> None:
        """Write float64 ``blocks`` into the weight, in its dtype (:meth:`_cast`)."""
        target.weight.copy_(cls._cast(target, blocks))

    def _variant_setup(self, model, adapter, calibration, device) -> list[FisherTarget]:
        """The checks and targets of :meth:`layer_variants`: one recomputation, inputs, memory (before any gradient)."""
        config: GradientFisherConfig = self.config
        if config.num_recomputations != 1:
            raise PruningConfigError(f"per-layer variants come from one pass of {config.method}: num_recomputations must be 1, got {config.num_recomputations}.")
        self._check_inputs(calibration)
        self.plan(model, adapter, device=device)  # raises before any gradient when the Fisher does not fit
        return self._targets(adapter.select_layers(config.targets, config.ignore))

    def layer_variants(self, model, adapter, calibration, sparsities: Sequence[float], *, device, result: PruningResult, disable_tqdm: bool = False) -> dict[str, list[torch.Tensor]]:
        """Every target layer's weights at every sparsity of ``sparsities``, each layer pruned on its own (as
        ``sparsity_distribution="uniform"``), from **one** pass of gradients; the model is not changed (SPDY's
        layer-wise database). With an N:M ``mask_structure`` there is one variant per layer, the N:M one
        (``sparsities`` is ignored).

        Returns ``{layer name: [weights (the layer's shape, dtype and device), one per sparsity]}``."""
        raise NotImplementedError


class _BlockFisherPruner(_GradientFisherPruner):
    """CAP and WoodFisher: one Fisher block per ``B`` weights, a per-layer analysis, then a selection."""

    config_class = BlockFisherConfig

    # -- method hooks -------------------------------------------------------------------------------------
    def _analyse(self, st: _StepTarget, hinv: torch.Tensor, nm_quota, result: PruningResult) -> dict[str, Any]:
        raise NotImplementedError

    def _select(self, analyses: list[dict[str, Any]], num_remove: int) -> tuple[list[Any], float | None]:
        """The decisions removing exactly ``num_remove`` weights over the given layers (one ranking), and the
        threshold: the largest score removed (``None`` when only already-pruned weights are removed)."""
        raise NotImplementedError

    def _nm_decision(self, analysis: dict[str, Any], nm_quota) -> torch.Tensor | None:
        raise NotImplementedError

    def _rebuild(self, st: _StepTarget, hinv: torch.Tensor | None, analysis: dict[str, Any], decision) -> torch.Tensor:
        """The new weights as float64 ``(n, B)`` blocks."""
        raise NotImplementedError

    # -- plumbing -----------------------------------------------------------------------------------------
    def _fisher_dtype(self) -> torch.dtype:
        return _DTYPES[self.config.fisher_dtype]

    def _fisher_device(self, device) -> torch.device:
        return torch.device(self.config.fisher_device) if self.config.fisher_device else torch.device(device)

    def _passes_per_step(self, num_groups: int) -> int:
        # layer streaming with one global threshold: a second pass per group rebuilds the weights
        config: BlockFisherConfig = self.config
        global_selection = config.sparsity_distribution == "global" and config.nm is None
        return num_groups * (2 if global_selection and num_groups > 1 else 1)

    def _scratch(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A workspace of ``shape`` kept across chunks and layers: a fresh allocation of hundreds of MiB is
        page-faulted in at every use (glibc returns large blocks to the system), which costs as much as the
        elimination itself on some machines."""
        numel = math.prod(shape)
        cached = getattr(self, "_scratch_buffer", None)
        if cached is None or cached.dtype != dtype or cached.device != device or cached.numel() < numel:
            cached = self._scratch_buffer = None
            cached = self._scratch_buffer = torch.empty(numel, dtype=dtype, device=device)
        return cached[:numel].view(shape)

    def _chunk(self, block_size: int, device: torch.device, itemsize: int) -> int:
        config: BlockFisherConfig = self.config
        if config.blocks_in_parallel > 0:
            return config.blocks_in_parallel
        return max(1, workspace_bytes(device) // (block_size * block_size * itemsize))

    def _groups(self, targets: list[FisherTarget]) -> list[list[FisherTarget]]:
        config: BlockFisherConfig = self.config
        if config.max_fisher_memory_gb is None:
            return [targets]
        groups = _layer_groups(targets, self._fisher_bytes, config.max_fisher_memory_gb * (1 << 30))
        for group in groups:
            size = self._fisher_bytes(group[0])
            if len(group) == 1 and size > config.max_fisher_memory_gb * (1 << 30):
                logger.warning(f"hf_sparsify: the Fisher of {group[0].name} alone ({size / 2**30:.2f} GiB) exceeds max_fisher_memory_gb.")
        return groups

    def _too_large_message(self, needed, available, workspace, fisher_device, targets) -> str:
        config: BlockFisherConfig = self.config
        itemsize = torch.finfo(self._fisher_dtype()).bits // 8
        budget_gb = _round_down((available - workspace) * 0.9 / (1 << 30))
        largest = max(targets, key=self._fisher_bytes)
        if budget_gb > 0 and self._fisher_bytes(largest) <= budget_gb * (1 << 30):
            count = len(_layer_groups(targets, self._fisher_bytes, budget_gb * (1 << 30)))
            passes = self._passes_per_step(count)
            fix = f"max_fisher_memory_gb={budget_gb:g} (layer streaming: {count} groups of layers, {passes} gradient passes per step instead of 1)"
        else:
            fix = f"a smaller fisher_block_size (the largest layer, {largest.name}, alone needs {format_bytes(self._fisher_bytes(largest))})"
        if fisher_device.type != "cpu":
            fix += ", fisher_device='cpu' (host memory)"
        if config.fisher_dtype == "float64":
            fix += ", fisher_dtype='float32' (half the memory; masks can differ from float64's at small damp)"
        return (
            f"{config.method} needs {format_bytes(needed)} of Fisher blocks ({config.fisher_dtype}: weights × B × {itemsize} bytes) "
            f"plus {format_bytes(workspace)} of workspace on {fisher_device}, which has {format_bytes(available)} available. "
            f"Set {fix}; or use FastCAP, which stores one B×B per layer."
        )

    def _inverse(self, stats, t: FisherTarget, result: PruningResult, inverse_info: dict[str, InverseInfo] | None) -> torch.Tensor:
        """The inverse Fisher blocks of ``t``, in place of its sums (``inverse_info``: where to count re-dampings)."""
        config: BlockFisherConfig = self.config
        with result.timed("inverse"):
            hinv, info = block_fisher_inverse(
                stats.sums.pop(t.name),
                stats.num_grads,
                config.damp,
                name=t.name,
                blocks_in_parallel=config.blocks_in_parallel if config.blocks_in_parallel > 0 else None,
                relative_damp=config.nm_damp if config.nm is not None else 0.0,
            )
        if inverse_info is not None:
            inverse_info.setdefault(t.name, InverseInfo()).merge(info)
        return hinv

    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: BlockFisherConfig = self.config
        self._check_inputs(calibration)
        self._announce(model, adapter, device)  # raises before any gradient when the Fisher does not fit
        targets = self._targets(adapter.select_layers(config.targets, config.ignore))
        fisher_device = self._fisher_device(device)
        groups = self._groups(targets)
        result = PruningResult(method=config.method)
        result.info["fisher_groups"] = len(groups)
        inverse_info: dict[str, InverseInfo] = {}
        breakdowns: dict[str, int] = {}
        collect = dict(device=device, fisher_device=fisher_device, dtype=self._fisher_dtype(), result=result, disable_tqdm=disable_tqdm)
        for step in range(config.num_recomputations):
            new_blocks, analyses = self._prune_step(model, calibration, targets, groups, step, collect, result, inverse_info, disable_tqdm)
            for t in targets:
                self._write(t, new_blocks.pop(t.name))
                breakdowns[t.name] = breakdowns.get(t.name, 0) + analyses[t.name].get("breakdowns", 0)
        self._scratch_buffer = None
        self._record(targets, result, inverse_info, {name: {"pivot_breakdowns": n} for name, n in breakdowns.items() if n})
        if config.nm is not None:
            result.info["nm_damp"] = config.nm_damp
        return result

    @torch.no_grad()
    def layer_variants(self, model, adapter, calibration, sparsities: Sequence[float], *, device, result: PruningResult, disable_tqdm: bool = False) -> dict[str, list[torch.Tensor]]:
        """Every target layer at every sparsity from one pass (see :meth:`_GradientFisherPruner.layer_variants`):
        per layer one inverse and one analysis (CAP: the greedy elimination, which keeps every block's order and
        cumulative losses); a sparsity then only decides how many weights each block loses, from the layer's own
        lowest scores (:func:`.selection.select_counts` on that layer's blocks), and the weights are rebuilt
        (CAP: :func:`.elimination.replay`)."""
        config: BlockFisherConfig = self.config
        targets = self._variant_setup(model, adapter, calibration, device)
        fisher_device = self._fisher_device(device)
        groups = self._groups(targets)
        nm_quota = self._nm_quota(0)
        inverse_info: dict[str, InverseInfo] = {}
        collect = {"device": device, "fisher_device": fisher_device, "dtype": self._fisher_dtype(), "result": result, "disable_tqdm": disable_tqdm}
        variants: dict[str, list[torch.Tensor]] = {}
        for number, group in enumerate(groups):
            stats = self._collect(model, group, calibration, 0, first=number == 0, **collect)
            for t in progress(group, desc=f"{config.method} layer variants", disable=disable_tqdm):
                blocks = _as_blocks(t, fisher_device)
                st = _StepTarget(t, blocks, int((blocks == 0).sum()))
                hinv = self._inverse(stats, t, result, inverse_info)
                analysis = self._analyse(st, hinv, nm_quota, result)
                if nm_quota is not None:
                    decisions = [self._nm_decision(analysis, nm_quota)]
                else:
                    with result.timed("selection"):
                        decisions = [self._select([analysis], num_to_remove(t.layout.numel, s, st.already))[0][0] for s in sparsities]
                with result.timed("update"):
                    variants[t.name] = [self._cast(t, self._rebuild(st, hinv, analysis, decision)) for decision in decisions]
                del hinv, analysis
            del stats
        self._scratch_buffer = None
        return variants

    def _prune_step(self, model, calibration, targets, groups, step, collect, result, inverse_info, disable_tqdm):
        """One recomputation: Fisher per group of layers, per-layer analysis, selection, rebuilt weights (not yet
        written, so every group's gradients see the same model)."""
        config: BlockFisherConfig = self.config
        local = config.sparsity_distribution == "uniform" or config.nm is not None
        nm_quota = self._nm_quota(step)
        analyses: dict[str, dict[str, Any]] = {}
        kept: dict[str, torch.Tensor] = {}
        steps: dict[str, _StepTarget] = {}
        new_blocks: dict[str, torch.Tensor] = {}
        for number, group in enumerate(groups):
            stats = self._collect(model, group, calibration, step, first=number == 0, **collect)
            for t in progress(group, desc=f"{config.method} layers", disable=disable_tqdm):
                blocks = _as_blocks(t, collect["fisher_device"])
                st = steps[t.name] = _StepTarget(t, blocks, int((blocks == 0).sum()))
                hinv = self._inverse(stats, t, result, inverse_info)
                analyses[t.name] = self._analyse(st, hinv, nm_quota, result)
                if local:  # the decision needs this layer only: rebuild now and free the inverse
                    decision = self._local_decision(st, analyses[t.name], nm_quota, step, result)
                    with result.timed("update"):
                        new_blocks[t.name] = self._rebuild(st, hinv, analyses[t.name], decision)
                elif len(groups) == 1:
                    kept[t.name] = hinv
                del hinv
            del stats
        if local:
            return new_blocks, analyses
        with result.timed("selection"):
            decisions = self._global_decisions([steps[t.name] for t in targets], analyses, step, result)
        for group in groups:
            # layer streaming: the inverses were not kept, so the group's Fisher is collected again (same batches)
            stats = None if len(groups) == 1 else self._collect(model, group, calibration, step, first=False, **collect)
            for t in group:
                hinv = kept.pop(t.name) if stats is None else self._inverse(stats, t, result, None)
                with result.timed("update"):
                    new_blocks[t.name] = self._rebuild(steps[t.name], hinv, analyses[t.name], decisions[t.name])
                del hinv
            del stats
        return new_blocks, analyses

    def _local_decision(self, st: _StepTarget, analysis, nm_quota, step: int, result: PruningResult):
        if nm_quota is not None:
            return self._nm_decision(analysis, nm_quota)
        numel = st.target.layout.numel
        k = num_to_remove(numel, self._step_sparsity(st.already, numel, step), st.already)
        with result.timed("selection"):
            (decision,), _ = self._select([analysis], k)
        return decision

    def _global_decisions(self, sts: list[_StepTarget], analyses, step: int, result: PruningResult) -> dict[str, Any]:
        numel = sum(st.target.layout.numel for st in sts)
        already = sum(st.already for st in sts)
        k = num_to_remove(numel, self._step_sparsity(already, numel, step), already)
        decisions, threshold = self._select([analyses[st.target.name] for st in sts], k)
        result.info["threshold"] = threshold
        return {st.target.name: decision for st, decision in zip(sts, decisions)}


class CAPPruner(_BlockFisherPruner):
    """CAP: greedy OBS elimination inside every Fisher block, one threshold on cumulative block loss."""

    config_class = CAPConfig

    def _analyse(self, st: _StepTarget, hinv, nm_quota, result):
        n, b = st.blocks.shape
        dtype = hinv.dtype
        size = self._chunk(b, hinv.device, torch.finfo(dtype).bits // 8)
        order = torch.empty(n, b, dtype=torch.int16 if b <= 32767 else torch.int32, device=hinv.device)
        cumloss = torch.zeros(n, b, dtype=dtype, device=hinv.device)
        forced = torch.empty(n, dtype=torch.long, device=hinv.device)
        weights = torch.empty_like(st.blocks) if nm_quota is not None else None
        breakdowns = 0
        with result.timed("elimination"):
            work = self._scratch((min(size, n), b, b), dtype, hinv.device)  # reused: fresh memory costs page faults
            for start, stop in chunks(n, size):
                copy = work[: stop - start].copy_(hinv[start:stop])
                elim = greedy_eliminate(st.blocks[start:stop], copy, st.blocks[start:stop] == 0, nm=nm_quota)
                steps = elim.order.shape[1]
                order[start:stop] = -1
                order[start:stop, :steps] = elim.order.to(order.dtype)
                cumloss[start:stop, :steps] = elim.cumloss
                if steps < b:  # N:M: nothing after the last step
                    cumloss[start:stop, steps:] = float("inf")
                forced[start:stop] = elim.num_forced
                if weights is not None:
                    weights[start:stop] = elim.weights.to(weights.dtype)
                breakdowns += elim.breakdowns
        return {"order": order, "cumloss": cumloss, "num_forced": forced, "weights": weights, "breakdowns": breakdowns}

    def _select(self, analyses, num_remove):
        # decisions: how many eliminations each block keeps (a prefix of its path)
        cumlosses = [a["cumloss"] for a in analyses]
        forced = [a["num_forced"] for a in analyses]
        counts = select_counts(cumlosses, forced, num_remove)
        return counts, kept_threshold(cumlosses, forced, counts)

    def _nm_decision(self, analysis, nm_quota):
        return None  # the elimination itself honoured the N:M groups

    def _rebuild(self, st, hinv, analysis, decision):
        if decision is None:
            return analysis["weights"]
        n, b = st.blocks.shape
        out = torch.empty_like(st.blocks)
        size = self._chunk(b, hinv.device, 8)
        for start, stop in chunks(n, size):
            out[start:stop] = replay(
                st.blocks[start:stop], hinv[start:stop], analysis["order"][start:stop], decision[start:stop], name=st.target.name
            )
        return out


class WoodFisherPruner(_BlockFisherPruner):
    """WoodFisher: saliencies once, every selected weight removed at once with the summed OBS update."""

    config_class = WoodFisherConfig

    def _analyse(self, st, hinv, nm_quota, result):
        with result.timed("saliency"):
            forced = st.blocks == 0
            scores = woodfisher_saliency(st.blocks, hinv).masked_fill(forced, float("-inf"))
        return {"scores": scores, "forced": forced}

    def _select(self, analyses, num_remove):
        scores = [a["scores"] for a in analyses]
        keeps = lowest_k_masks(scores, num_remove)
        removed = torch.cat([s[~keep].reshape(-1) for s, keep in zip(scores, keeps)])
        finite = removed[torch.isfinite(removed)]
        return [~keep for keep in keeps], (float(finite.max().item()) if finite.numel() else None)

    def _nm_decision(self, analysis, nm_quota):
        m, quota = nm_quota
        return nm_remove_mask(analysis["scores"], m, quota, analysis["forced"])

    def _rebuild(self, st, hinv, analysis, decision):
        n, b = st.blocks.shape
        out = torch.empty_like(st.blocks)
        for start, stop in chunks(n, self._chunk(b, hinv.device, 8)):
            out[start:stop] = woodfisher_update(st.blocks[start:stop], hinv[start:stop], decision[start:stop])
        return out


class FastCAPPruner(_GradientFisherPruner):
    """FastCAP: one shared ``B×B`` Fisher per layer and SparseGPT-style column-sequential updates."""

    config_class = FastCAPConfig
    fisher_mode = "shared"

    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: FastCAPConfig = self.config
        self._check_inputs(calibration)
        self._announce(model, adapter, device)
        targets = self._targets(adapter.select_layers(config.targets, config.ignore))
        result = PruningResult(method=config.method)
        for step in range(config.num_recomputations):
            # one B×B per layer: float64 sums cost nothing
            stats = self._collect(model, targets, calibration, step, device=device, fisher_device=device, dtype=self._fisher_dtype(), result=result, disable_tqdm=disable_tqdm)
            nm_quota = self._nm_quota(step)
            for t in progress(targets, desc="fastcap layers", disable=disable_tqdm):
                blocks = _as_blocks(t, torch.device(device))
                already = int((blocks == 0).sum())
                nm = None if nm_quota is None else (nm_quota[0] - nm_quota[1], nm_quota[0])
                with result.timed("update"):
                    new = fastcap_prune(
                        blocks,
                        stats.sums.pop(t.name),
                        stats.num_grads,
                        sparsity=self._step_sparsity(already, t.layout.numel, step),
                        damp=config.damp,
                        nm=nm,
                        columns_per_step=config.columns_per_step,
                        name=t.name,
                    )
                self._write(t, new)
        self._record(targets, result, {}, {})
        return result

    @torch.no_grad()
    def layer_variants(self, model, adapter, calibration, sparsities: Sequence[float], *, device, result: PruningResult, disable_tqdm: bool = False) -> dict[str, list[torch.Tensor]]:
        """Every target layer at every sparsity from one pass (see :meth:`_GradientFisherPruner.layer_variants`):
        one statistics pass, the shared factor of each layer's ``B×B`` Fisher computed once
        (:func:`.fastcap.shared_fisher_factor`), then one cheap column-sequential solve per sparsity."""
        config: FastCAPConfig = self.config
        targets = self._variant_setup(model, adapter, calibration, device)
        stats = self._collect(model, targets, calibration, 0, device=device, fisher_device=device, dtype=self._fisher_dtype(), result=result, disable_tqdm=disable_tqdm)
        nm = None if config.nm is None else tuple(config.nm)
        variants: dict[str, list[torch.Tensor]] = {}
        for t in progress(targets, desc="fastcap layer variants", disable=disable_tqdm):
            blocks = _as_blocks(t, torch.device(device))
            fisher_sum = stats.sums.pop(t.name)
            with result.timed("inverse"):
                factor = shared_fisher_factor(fisher_sum, stats.num_grads, config.damp, name=t.name)
            with result.timed("update"):
                variants[t.name] = [
                    self._cast(t, fastcap_prune(blocks, fisher_sum, stats.num_grads, sparsity=s, damp=config.damp, nm=nm, columns_per_step=config.columns_per_step, name=t.name, factor=factor))
                    for s in ([1 - nm[0] / nm[1]] if nm is not None else sparsities)
                ]
        return variants
