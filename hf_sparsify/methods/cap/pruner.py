"""The CAP, WoodFisher and FastCAP pruners: they wire the config, the adapter's targets, the gradient observer
and the math modules together.

One pruning step (repeated ``num_recomputations`` times with interpolated sparsity):

1. masked mini-batch gradients → Fisher sums (:func:`hf_sparsify.observers.fisher.collect_fisher`), per group of
   layers whose Fisher fits in ``max_fisher_memory_gb`` (all layers at once by default);
2. per layer: batched Cholesky inverse (:mod:`.inverse`), then CAP's greedy elimination (:mod:`.elimination`)
   or WoodFisher's saliencies (:mod:`.woodfisher`);
3. selection (:mod:`.selection`): one global threshold, or per layer, or N:M groups;
4. weights rebuilt (CAP's replay, WoodFisher's summed update) and written back.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from ...configuration import PruningConfigError
from ...data import CalibrationDataError
from ...observers.distributed import distributed_state
from ...observers.fisher import LOSS_OPTIONS, BlockLayout, FisherTarget, GradientError, collect_fisher
from ...surgery import check_nm, lowest_k_masks
from ...utils import get_logger, progress
from ..base import Pruner, PruningError, PruningResult
from .config import CUSTOM_LOSS, BlockFisherConfig, CAPConfig, FastCAPConfig, GradientFisherConfig, WoodFisherConfig
from .elimination import greedy_eliminate, replay
from .fastcap import fastcap_prune
from .inverse import InverseInfo, block_fisher_inverse, chunks
from .selection import forced_scores, nm_remove_mask, num_to_remove
from .woodfisher import woodfisher_saliency, woodfisher_update

__all__ = ["CAPPruner", "WoodFisherPruner", "FastCAPPruner"]

logger = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _workspace_bytes(device: torch.device) -> int:
    return (2 << 30) if device.type == "cuda" else (256 << 20)


@dataclass
class _StepTarget:
    """Per pruning step: the target, its weight as blocks, and the sizes the selection needs."""

    target: FisherTarget
    blocks: torch.Tensor  # (n, B) on the Fisher device
    already: int  # weights already zero


class _GradientFisherPruner(Pruner):
    """Shared plumbing: targets and layouts, calibration streams, gradient collection, bookkeeping."""

    config_class = GradientFisherConfig
    needs_calibration_data = True
    fisher_mode = "blocks"

    # ---------------------------------------------------------------------------------------------- inputs
    def _check_inputs(self, calibration) -> None:
        config: GradientFisherConfig = self.config
        if config.loss == CUSTOM_LOSS:
            raise PruningConfigError(
                "This configuration was saved with a custom loss function, which cannot be stored: pass it again, "
                "e.g. config.replace(loss=my_loss_fn), or use loss='labels' / loss='features'."
            )
        if calibration is None:
            raise CalibrationDataError(f"{config.method} reads calibration data: pass calibration_data=...")
        if config.loss == "labels" and calibration.has_labels is False:
            raise CalibrationDataError(f"{config.method} with loss='labels' needs calibration data with labels, and it has none: use {LOSS_OPTIONS}.")

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

    def _batches(self, calibration, step: int):
        """The ``num_grads`` batches of recomputation ``step`` (0-based); the same on every call."""
        config: GradientFisherConfig = self.config
        m = config.gradients
        stream = calibration.iter_batches(m * (step + 1), batch_size=config.grad_batch_size)
        return islice(stream, m * step, m * (step + 1))

    def _collect(self, model, targets, calibration, step, *, device, fisher_device, dtype, result, disable_tqdm):
        config: GradientFisherConfig = self.config
        try:
            stats = collect_fisher(
                model,
                targets,
                self._batches(calibration, step),
                loss=config.loss,
                mode=self.fisher_mode,
                device=device,
                fisher_device=fisher_device,
                dtype=dtype,
                mixed_precision=config.mixed_precision,
                seed=config.seed + step,
                disable_tqdm=disable_tqdm,
            )
        except GradientError as err:
            raise PruningError(str(err)) from None
        for phase, seconds in stats.timings.items():
            result.timings[phase] = result.timings.get(phase, 0.0) + seconds
        result.info["gradient_passes"] = result.info.get("gradient_passes", 0) + 1
        result.info["num_grads"] = stats.num_grads
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
                "loss": config.loss if isinstance(config.loss, str) else CUSTOM_LOSS,
                "num_processes": distributed_state().num_processes,
            }
        )

    @staticmethod
    @torch.no_grad()
    def _write(target: FisherTarget, blocks: torch.Tensor) -> None:
        weight = target.weight
        weight.copy_(target.layout.from_blocks(blocks).to(device=weight.device, dtype=weight.dtype))


class _BlockFisherPruner(_GradientFisherPruner):
    """CAP and WoodFisher: one Fisher block per ``B`` weights, a per-layer analysis, then a selection."""

    config_class = BlockFisherConfig

    # -- method hooks -------------------------------------------------------------------------------------
    def _analyse(self, st: _StepTarget, hinv: torch.Tensor, nm_quota, result: PruningResult) -> dict[str, Any]:
        raise NotImplementedError

    def _scores(self, analysis: dict[str, Any]) -> torch.Tensor:
        """Per-weight or per-step scores (``(n, B)``) for the selection: the lowest are removed."""
        raise NotImplementedError

    def _decision(self, keep: torch.Tensor, analysis: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def _nm_decision(self, analysis: dict[str, Any], nm_quota) -> torch.Tensor | None:
        raise NotImplementedError

    def _rebuild(self, st: _StepTarget, hinv: torch.Tensor | None, analysis: dict[str, Any], decision) -> torch.Tensor:
        raise NotImplementedError

    # -- plumbing -----------------------------------------------------------------------------------------
    def _chunk(self, block_size: int, device: torch.device, itemsize: int) -> int:
        config: BlockFisherConfig = self.config
        if config.blocks_in_parallel > 0:
            return config.blocks_in_parallel
        return max(1, _workspace_bytes(device) // (block_size * block_size * itemsize))

    def _groups(self, targets: list[FisherTarget], itemsize: int) -> list[list[FisherTarget]]:
        config: BlockFisherConfig = self.config
        if config.max_fisher_memory_gb is None:
            return [targets]
        budget = config.max_fisher_memory_gb * (1 << 30)
        groups, current, used = [], [], 0
        for t in targets:
            size = t.layout.numel * t.layout.block_size * itemsize
            if current and used + size > budget:
                groups.append(current)
                current, used = [], 0
            if size > budget:
                logger.warning(f"hf_sparsify: the Fisher of {t.name} alone ({size / 2**30:.2f} GiB) exceeds max_fisher_memory_gb.")
            current.append(t)
            used += size
        groups.append(current)
        return groups

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
            )
        if inverse_info is not None:
            inverse_info.setdefault(t.name, InverseInfo()).merge(info)
        return hinv

    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: BlockFisherConfig = self.config
        self._check_inputs(calibration)
        targets = self._targets(adapter.select_layers(config.targets, config.ignore))
        result = PruningResult(method=config.method)
        fisher_device = torch.device(config.fisher_device) if config.fisher_device else torch.device(device)
        dtype = _DTYPES[config.fisher_dtype]
        groups = self._groups(targets, torch.finfo(dtype).bits // 8)
        result.info["fisher_groups"] = len(groups)
        inverse_info: dict[str, InverseInfo] = {}
        breakdowns: dict[str, int] = {}
        collect = dict(device=device, fisher_device=fisher_device, dtype=dtype, result=result, disable_tqdm=disable_tqdm)
        for step in range(config.num_recomputations):
            new_blocks, analyses = self._prune_step(model, calibration, targets, groups, step, collect, result, inverse_info, disable_tqdm)
            for t in targets:
                self._write(t, new_blocks.pop(t.name))
                breakdowns[t.name] = breakdowns.get(t.name, 0) + analyses[t.name].get("breakdowns", 0)
        self._record(targets, result, inverse_info, {name: {"pivot_breakdowns": n} for name, n in breakdowns.items() if n})
        return result

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
        for group in groups:
            stats = self._collect(model, group, calibration, step, **collect)
            for t in progress(group, desc=f"{config.method} layers", disable=disable_tqdm):
                blocks = t.layout.to_blocks(t.weight.detach()).to(collect["fisher_device"])
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
            # layer streaming: the inverses were not kept, so the group's Fisher is collected again
            stats = None if len(groups) == 1 else self._collect(model, group, calibration, step, **collect)
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
            keep = lowest_k_masks([self._scores(analysis)], k)[0]
        return self._decision(keep, analysis)

    def _global_decisions(self, sts: list[_StepTarget], analyses, step: int, result: PruningResult) -> dict[str, Any]:
        numel = sum(st.target.layout.numel for st in sts)
        already = sum(st.already for st in sts)
        k = num_to_remove(numel, self._step_sparsity(already, numel, step), already)
        scores = [self._scores(analyses[st.target.name]) for st in sts]
        keeps = lowest_k_masks(scores, k)
        removed = torch.cat([s[~keep].reshape(-1) for s, keep in zip(scores, keeps)])
        finite = removed[torch.isfinite(removed)]
        result.info["threshold"] = float(finite.max().item()) if finite.numel() else None
        return {st.target.name: self._decision(keep, analyses[st.target.name]) for st, keep in zip(sts, keeps)}


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
            for start, stop in chunks(n, size):
                elim = greedy_eliminate(st.blocks[start:stop], hinv[start:stop].clone(), st.blocks[start:stop] == 0, nm=nm_quota)
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

    def _scores(self, analysis):
        return forced_scores(analysis["cumloss"], analysis["num_forced"])

    def _decision(self, keep, analysis):
        return (~keep).sum(1)  # eliminations kept per block

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

    def _scores(self, analysis):
        return analysis["scores"]

    def _decision(self, keep, analysis):
        return ~keep

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
        targets = self._targets(adapter.select_layers(config.targets, config.ignore))
        result = PruningResult(method=config.method)
        for step in range(config.num_recomputations):
            stats = self._collect(model, targets, calibration, step, device=device, fisher_device=device, dtype=torch.float32, result=result, disable_tqdm=disable_tqdm)
            nm_quota = self._nm_quota(step)
            for t in progress(targets, desc="fastcap layers", disable=disable_tqdm):
                blocks = t.layout.to_blocks(t.weight.detach())
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
