"""Pruning during training: the set-up checks, a schedule's points in optimizer steps, and one pruning step.

Everything about the method is asked of its configuration and pruner classes (the method contract): the field a
schedule sets (``config.target``, ``config.with_target(value)``), whether a schedule may ramp it
(``config.target_interpolable``), whether the method changes the model's shapes (``pruner_class.changes_shapes``)
and whether it reads data (``pruner_class.needs_calibration_data``).

```python
>>> from hf_sparsify import MagnitudeConfig, PruningSchedule
>>> from hf_sparsify.trainer.pruning import check_pruning_setup, resolve_points
>>> config = MagnitudeConfig(sparsity=0.8)
>>> schedule = PruningSchedule.gradual(initial_sparsity=0.2, end=2, every=1, unit="epochs", ramp="linear")
>>> check_pruning_setup(config, schedule).__name__
'MagnitudePruner'
>>> resolve_points(config, schedule, steps_per_epoch=10, max_steps=30)      # (optimizer step, sparsity)
[(0, 0.2), (10, 0.5), (20, 0.8)]
```
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..api import prune
from ..configuration import PruningConfig, get_method
from ..methods.base import Pruner
from .masks import MaskState
from .schedules import PruningSchedule, PruningScheduleError

__all__ = ["check_pruning_setup", "config_at", "due_point", "describe_step", "resolve_points", "run_pruning_step", "sparsity_log_entries"]


def config_at(config: PruningConfig, target: Any) -> PruningConfig:
    """The configuration a pruning step runs: ``config`` with its target set to the step's (``None``: unchanged)."""
    return config if target is None else config.with_target(target)


def check_pruning_setup(config: PruningConfig, schedule: PruningSchedule) -> type[Pruner]:
    """Check that ``schedule`` can drive ``config``'s method; returns the class of the pruner it gets for ``config``.

    Refused: a ramp that goes below its start, a ramp of a target that cannot be interpolated (a speed-up), a step
    target the configuration refuses (N:M fixes the sparsity), and a method that changes shapes on anything but a
    one-shot schedule at step 0 (shapes cannot change between optimizer steps).
    """
    # the class of the pruner this configuration gets (SPDY's depends on its base method: widths change shapes,
    # sparsity levels do not)
    pruner_class = type(get_method(config.method).pruner_class(config))
    final = config.target
    schedule.check_final_sparsity(final)
    points = schedule.points(final)
    if not config.target_interpolable and any(value is not None and value != final for _, value in points):
        raise PruningScheduleError(
            f"{config.method}'s target {config.target_field}={final!r} cannot be ramped by a schedule (it is not a "
            "sparsity): use PruningSchedule.one_shot(), or a schedule whose every step prunes to the final target."
        )
    for _, value in points:
        config_at(config, value)  # the config validates itself: N:M vs sparsity, ranges
    if pruner_class.changes_shapes and schedule.times() != [0]:
        raise PruningScheduleError(
            f"{config.method} removes structures (the model's shapes change), which cannot happen between optimizer "
            "steps: use schedule=PruningSchedule.one_shot() (prune before the first step), or prune with "
            "hf_sparsify.prune(...) first and give SparseTrainer the pruned model."
        )
    return pruner_class


def resolve_points(config: PruningConfig, schedule: PruningSchedule, steps_per_epoch: int | None, max_steps: int) -> list[tuple[int, Any]]:
    """The schedule's pruning points as ``(optimizer step, target)``; a point at or after ``max_steps`` (no recovery
    step after it) is refused."""
    points = schedule.resolve(steps_per_epoch, config.target)
    late = [step for step, _ in points if step >= max_steps]
    if late:
        raise PruningScheduleError(
            f"the schedule prunes at optimizer step {late[0]}, but training ends after {max_steps} steps "
            f"({steps_per_epoch} steps per epoch): end the schedule earlier or train longer (a pruning step needs "
            "recovery steps after it)."
        )
    return points


def due_point(points: list[tuple[int, Any]], done: int, global_step: int) -> int | None:
    """The index of the pruning point to run at ``global_step`` when ``done`` points ran already: the latest one
    due (a resumed run that skipped points jumps to the latest target), or ``None``."""
    due = [i for i in range(done, len(points)) if points[i][0] <= global_step]
    return due[-1] if due else None


def describe_step(index: int, total: int, config: PruningConfig) -> str:
    """``"pruning step 2/4 (cap → 60.0%)"``: a fraction target in percent, any other as ``field=value``."""
    target = config.target
    if isinstance(target, float) and config.target_interpolable:
        shown = f" → {target:.1%}"
    else:
        shown = f" → {config.target_field}={target!r}" if target is not None else ""
    return f"pruning step {index + 1}/{total} ({config.method}{shown})"


def run_pruning_step(model: nn.Module, config: PruningConfig, calibration, *, index: int, disable_tqdm: bool = False) -> float:
    """Prune ``model`` in place with ``config`` (seeded with ``config.seed + index``, without touching the training's
    random stream); returns the seconds it took. Gradients left by the method are dropped."""
    started = time.perf_counter()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed + index)
        prune(model, config, calibration, inplace=True, disable_tqdm=disable_tqdm)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def sparsity_log_entries(masks: MaskState, history: list[dict[str, Any]], *, target_is_sparsity: bool = True) -> dict[str, float]:
    """What every training log gets: the measured ``sparsity`` of the masked layers, the last step's
    ``sparsity_target`` (when the target is a sparsity) and the number of ``pruning_steps`` done."""
    out: dict[str, float] = {}
    if len(masks):
        out["sparsity"] = masks.sparsity()["global"]
    if history:
        last = history[-1].get("sparsity")
        if isinstance(last, float) and target_is_sparsity:
            out["sparsity_target"] = last
        out["pruning_steps"] = len(history)
    return out
