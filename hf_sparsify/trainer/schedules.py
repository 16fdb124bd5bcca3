"""Gradual pruning schedules: when to prune, and to which sparsity.

A :class:`PruningSchedule` is a list of *pruning points* ``(time, sparsity)``, in optimizer steps or in epochs. At
each point :class:`~hf_sparsify.SparseTrainer` runs the pruning method of its ``pruning_config`` (any method of the
registry) with ``sparsity`` set to the point's value, on fresh calibration batches drawn from the training data.
The sparsity ramp between ``initial_sparsity`` and ``final_sparsity`` is ``"linear"``, ``"cubic"`` (Zhu & Gupta,
2017: fast at first, slow at the end) or given as ``(time, sparsity)`` segments with linear interpolation inside each
segment, as in the CAP paper's recipes.

```python
>>> from hf_sparsify import PruningSchedule
>>> PruningSchedule.one_shot().points()                      # prune once, before the first step
[(0, None)]
>>> PruningSchedule.gradual(initial_sparsity=0.3, final_sparsity=0.7, start=0, end=300, every=100, ramp="linear").points()
[(0, 0.3), (100, 0.4333...), (200, 0.5666...), (300, 0.7)]
>>> # CAP, gradual ViT over 300 epochs: a pruning step every 20 epochs, linear inside each segment,
>>> # and a learning rate that restarts at every pruning step.
>>> cap = PruningSchedule.from_segments([(20, 0.5), (40, 0.6), (100, 0.75), (280, 0.9)], every=20, unit="epochs",
...                                     cyclic_lr=True, min_learning_rate=1e-5)
```

A ``None`` sparsity means "the sparsity of the pruning configuration".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import HfSparsifyError

__all__ = ["PruningSchedule", "PruningScheduleError", "cyclic_linear_factor", "cyclic_lr_scheduler"]

RAMPS = ("constant", "linear", "cubic", "segments")
UNITS = ("steps", "epochs")


class PruningScheduleError(HfSparsifyError, ValueError):
    """A pruning schedule is invalid (goes backwards, passes 1.0, does not fit the training run)."""


def _check_sparsity(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PruningScheduleError(f"{name} must be a number in [0, 1), got {value!r}.")
    if not 0 <= value < 1:
        raise PruningScheduleError(
            f"{name}={value} is outside [0, 1): a sparsity is the fraction of weights removed, and 1.0 or more would "
            "remove every weight. Use e.g. 0.9 for 90%."
        )


@dataclass(kw_only=True)
class PruningSchedule:
    """When :class:`~hf_sparsify.SparseTrainer` prunes, and to which sparsity.

    Build it with :meth:`one_shot`, :meth:`gradual` or :meth:`from_segments` rather than with the fields.

    Args:
        ramp: ``"constant"`` (one pruning step at ``start``), ``"linear"``, ``"cubic"`` or ``"segments"``.
        start: time of the first pruning step (in ``unit``).
        end: time of the last pruning step; ``end`` is always a pruning point.
        every: distance between pruning steps; ``None`` with segments prunes at the segment knots only.
        initial_sparsity: sparsity of the first pruning step (linear/cubic ramps).
        final_sparsity: sparsity of the last pruning step; ``None`` means the pruning configuration's sparsity.
        segments: ``[(time, sparsity), ...]`` knots of a piecewise-linear ramp (``ramp="segments"``); the sparsity
            is held after the last knot.
        unit: ``"steps"`` (optimizer steps, i.e. ``TrainerState.global_step``) or ``"epochs"`` (converted to steps
            with the number of optimizer steps per epoch; fractions allowed).
        cyclic_lr: replace the Trainer's learning-rate schedule by a linear decay from ``learning_rate`` to
            ``min_learning_rate`` that restarts at every pruning step (CAP's "cyclic linear" schedule). The cycles run
            from step 0 to the first pruning step, between pruning steps, and from the last one to the end.
        min_learning_rate: the learning rate at the end of each cycle.
    """

    ramp: str = "constant"
    start: float = 0
    end: float | None = None
    every: float | None = None
    initial_sparsity: float | None = None
    final_sparsity: float | None = None
    segments: list[tuple[float, float]] | None = None
    unit: str = "steps"
    cyclic_lr: bool = False
    min_learning_rate: float = 0.0

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def one_shot(cls, at: float = 0, *, sparsity: float | None = None, unit: str = "steps", **kwargs) -> "PruningSchedule":
        """Prune once, at ``at`` (default: before the first optimizer step), then keep the masks fixed."""
        return cls(ramp="constant", start=at, end=at, final_sparsity=sparsity, unit=unit, **kwargs)

    @classmethod
    def gradual(
        cls,
        *,
        initial_sparsity: float,
        final_sparsity: float | None = None,
        start: float = 0,
        end: float,
        every: float,
        ramp: str = "cubic",
        unit: str = "steps",
        **kwargs,
    ) -> "PruningSchedule":
        """Prune every ``every`` steps (or epochs) from ``start`` to ``end``, the sparsity rising from
        ``initial_sparsity`` to ``final_sparsity`` along a ``"linear"`` or ``"cubic"`` ramp."""
        return cls(ramp=ramp, start=start, end=end, every=every, initial_sparsity=initial_sparsity, final_sparsity=final_sparsity, unit=unit, **kwargs)

    @classmethod
    def from_segments(cls, segments: Sequence[tuple[float, float]], *, every: float | None = None, unit: str = "steps", **kwargs) -> "PruningSchedule":
        """A piecewise-linear ramp through ``(time, sparsity)`` knots, pruning every ``every`` steps (or epochs)
        from the first knot to the last (at the knots only when ``every`` is None)."""
        segments = [tuple(knot) for knot in segments]
        return cls(ramp="segments", segments=segments, every=every, unit=unit, **kwargs)

    # ----------------------------------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`PruningScheduleError` with the fix when the schedule is inconsistent."""
        if self.ramp not in RAMPS:
            raise PruningScheduleError(f"ramp={self.ramp!r} is not one of {list(RAMPS)}.")
        if self.unit not in UNITS:
            raise PruningScheduleError(f"unit={self.unit!r} is not one of {list(UNITS)} (optimizer steps or epochs).")
        if self.min_learning_rate < 0:
            raise PruningScheduleError(f"min_learning_rate must be ≥ 0, got {self.min_learning_rate}.")
        _check_sparsity("initial_sparsity", self.initial_sparsity)
        _check_sparsity("final_sparsity", self.final_sparsity)
        if self.ramp == "segments":
            if not self.segments or len(self.segments) < 1:
                raise PruningScheduleError("ramp='segments' needs segments=[(time, sparsity), ...] with at least one knot.")
            for knot in self.segments:
                if len(knot) != 2:
                    raise PruningScheduleError(f"each segment knot is a (time, sparsity) pair, got {knot!r}.")
            times = [float(t) for t, _ in self.segments]
            for k, (t, s) in enumerate(self.segments):
                _check_sparsity(f"segments[{k}] sparsity", s)
                self._check_time(f"segments[{k}] time", t)
            for k in range(1, len(self.segments)):
                (t0, s0), (t1, s1) = self.segments[k - 1], self.segments[k]
                if t1 <= t0:
                    raise PruningScheduleError(
                        f"segment times must increase: knot {k} is at {t1} after a knot at {t0}. Sort the knots by time."
                    )
                if s1 < s0:
                    raise PruningScheduleError(
                        f"the schedule goes backwards: sparsity {s1} at {t1} is below {s0} at {t0}. Gradual pruning only adds "
                        "zeros; a lower sparsity would need pruned weights back."
                    )
            self.start, self.end = times[0], times[-1]
        else:
            if self.segments is not None:
                raise PruningScheduleError(f"segments= is only used with ramp='segments' (got ramp={self.ramp!r}).")
            self._check_time("start", self.start)
            if self.end is None:
                self.end = self.start
            self._check_time("end", self.end)
            if self.end < self.start:
                raise PruningScheduleError(f"end={self.end} is before start={self.start}.")
            if self.ramp == "constant":
                if self.end != self.start:
                    raise PruningScheduleError("ramp='constant' prunes once: use start only (or PruningSchedule.one_shot(at=...)).")
            else:
                if self.initial_sparsity is None:
                    raise PruningScheduleError(f"ramp={self.ramp!r} needs initial_sparsity (the sparsity of the first pruning step).")
                if self.final_sparsity is not None and self.final_sparsity < self.initial_sparsity:
                    raise PruningScheduleError(
                        f"the schedule goes backwards: final_sparsity={self.final_sparsity} is below initial_sparsity="
                        f"{self.initial_sparsity}. Gradual pruning only adds zeros."
                    )
                if self.end == self.start:
                    raise PruningScheduleError(f"a {self.ramp} ramp needs end > start (got both {self.start}); for a single step use one_shot().")
                if self.every is None:
                    raise PruningScheduleError(f"a {self.ramp} ramp needs every= (the distance between pruning steps).")
        if self.every is not None:
            if isinstance(self.every, bool) or not isinstance(self.every, (int, float)) or self.every <= 0:
                raise PruningScheduleError(f"every must be a positive number of {self.unit}, got {self.every!r}.")
            if self.unit == "steps" and float(self.every) != int(self.every):
                raise PruningScheduleError(f"every={self.every} must be a whole number of optimizer steps (or use unit='epochs').")

    def _check_time(self, name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
            raise PruningScheduleError(f"{name} must be a non-negative number of {self.unit}, got {value!r}.")
        if self.unit == "steps" and float(value) != int(value):
            raise PruningScheduleError(f"{name}={value} must be a whole optimizer step (or use unit='epochs').")

    # ----------------------------------------------------------------------------------------- queries
    def check_final_sparsity(self, config_sparsity: float | None) -> None:
        """Check the ramp against the pruning configuration's sparsity (used where ``final_sparsity`` is None)."""
        if self.ramp in ("linear", "cubic") and self.final_sparsity is None and config_sparsity is not None:
            if config_sparsity < self.initial_sparsity:
                raise PruningScheduleError(
                    f"the schedule goes backwards: the pruning configuration's sparsity {config_sparsity} is below "
                    f"initial_sparsity={self.initial_sparsity}."
                )

    def sparsity_at(self, time: float, final: float | None = None) -> float | None:
        """The ramp's sparsity at ``time`` (in ``unit``); ``final`` replaces a ``None`` final sparsity."""
        target = self.final_sparsity if self.final_sparsity is not None else final
        if self.ramp == "constant":
            return target
        if self.ramp == "segments":
            knots = self.segments
            if time <= knots[0][0]:
                return float(knots[0][1])
            for (t0, s0), (t1, s1) in zip(knots, knots[1:]):
                if time <= t1:
                    return float(s0 + (s1 - s0) * (time - t0) / (t1 - t0))
            return float(knots[-1][1])
        if target is None:
            return None
        frac = min(max((time - self.start) / (self.end - self.start), 0.0), 1.0)
        if self.ramp == "linear":
            return float(self.initial_sparsity + (target - self.initial_sparsity) * frac)
        return float(target + (self.initial_sparsity - target) * (1.0 - frac) ** 3)

    def times(self) -> list[float]:
        """The pruning times, in ``unit``, ``end`` included."""
        if self.ramp == "constant":
            return [self.start]
        if self.every is None:  # segments at their knots
            return [float(t) for t, _ in self.segments]
        count = int(math.floor((self.end - self.start) / self.every + 1e-9))
        out = [self.start + k * self.every for k in range(count + 1)]
        if self.end - out[-1] > 1e-9:
            out.append(self.end)
        return [int(round(t)) if self.unit == "steps" else float(t) for t in out]

    def points(self, final: float | None = None) -> list[tuple[float, float | None]]:
        """``[(time, sparsity), ...]``: every pruning step. Points that would not raise the sparsity (a hold at the
        end of a segment list) are dropped."""
        out: list[tuple[float, float | None]] = []
        for t in self.times():
            s = self.sparsity_at(t, final)
            if out and s is not None and out[-1][1] is not None and s <= out[-1][1] + 1e-12:
                continue
            out.append((t, s))
        return out

    def resolve(self, steps_per_epoch: int | None, final: float | None = None) -> list[tuple[int, float | None]]:
        """The pruning points as ``(global_step, sparsity)``: epochs are converted with ``steps_per_epoch``
        (optimizer steps per epoch). Two points that land on the same step are an error."""
        out: list[tuple[int, float | None]] = []
        for t, s in self.points(final):
            if self.unit == "epochs":
                if not steps_per_epoch:
                    raise PruningScheduleError(
                        "a schedule in epochs needs the number of optimizer steps per epoch, which a training dataset "
                        "without a length does not give: use unit='steps'."
                    )
                step = int(round(t * steps_per_epoch))
            else:
                step = int(t)
            if out and step <= out[-1][0]:
                raise PruningScheduleError(
                    f"pruning points at {out[-1][0]} and {t} {self.unit} land on the same optimizer step ({step}): "
                    f"there are {steps_per_epoch} optimizer steps per epoch. Prune less often (a larger every=) or train longer."
                )
            out.append((step, s))
        return out

    def describe(self) -> str:
        """A one-line human description (used in model cards)."""
        unit = "epoch" if self.unit == "epochs" else "step"
        if self.ramp == "constant":
            text = f"one-shot at {unit} {self.start:g}"
        elif self.ramp == "segments":
            knots = ", ".join(f"{s:.0%} at {t:g}" for t, s in self.segments)
            text = f"segments ({knots}), linear inside each" + (f", a step every {self.every:g} {unit}s" if self.every else "")
        else:
            final = f"{self.final_sparsity:.0%}" if self.final_sparsity is not None else "the config's sparsity"
            text = f"{self.ramp} {self.initial_sparsity:.0%} → {final} over {unit}s {self.start:g}–{self.end:g}, every {self.every:g}"
        if self.cyclic_lr:
            text += f"; cyclic linear LR restarting at each pruning step (down to {self.min_learning_rate:g})"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["segments"] is not None:
            data["segments"] = [list(k) for k in data["segments"]]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningSchedule":
        data = dict(data)
        if data.get("segments") is not None:
            data["segments"] = [tuple(k) for k in data["segments"]]
        return cls(**data)


def cyclic_linear_factor(step: int, boundaries: Sequence[int], max_steps: int, min_ratio: float) -> float:
    """The learning-rate multiplier of CAP's cyclic linear schedule at optimizer step ``step``.

    The cycles are ``[0, b_0), [b_0, b_1), ..., [b_last, max_steps)`` for the pruning steps ``boundaries``; inside a
    cycle the multiplier falls linearly from 1 to ``min_ratio`` (reached at the cycle's last step).
    """
    edges = sorted({0, *[b for b in boundaries if 0 < b < max_steps], max_steps})
    for lo, hi in zip(edges, edges[1:]):
        if lo <= step < hi:
            length = hi - lo
            if length <= 1:
                return 1.0
            return 1.0 - (1.0 - min_ratio) * (step - lo) / (length - 1)
    return min_ratio


def cyclic_lr_scheduler(optimizer, schedule: PruningSchedule, boundaries: Sequence[int], max_steps: int, learning_rate: float):
    """CAP's cyclic linear learning rate as a ``LambdaLR`` on ``optimizer``: from ``learning_rate`` down to
    ``schedule.min_learning_rate`` in every cycle between the pruning steps ``boundaries``."""
    import torch

    if schedule.min_learning_rate > learning_rate:
        raise PruningScheduleError(
            f"min_learning_rate={schedule.min_learning_rate} is above learning_rate={learning_rate}: each cycle decays "
            "from learning_rate down to min_learning_rate."
        )
    min_ratio = schedule.min_learning_rate / learning_rate if learning_rate > 0 else 0.0
    boundaries = list(boundaries)

    def factor(step: int) -> float:
        return cyclic_linear_factor(step, boundaries, max_steps, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
