"""Observers collect what methods need over calibration batches, in one pass where possible: activation moments
(VBP), masked mini-batch gradients folded into Fisher blocks (CAP, WoodFisher), Hessian-vector products (SOSP),
layer timings (SPDY). Data parallelism (Accelerate) and the cross-process reductions live here, once for all;
every gradient-based statistic runs on the one gradient engine, :func:`run_gradients` (``gradients.py``)."""

from .distributed import all_reduce_sum, distributed_state, shard_batches
from .gradients import GradientError, GradientObserver, GradientPass, GradientStep, make_loss, run_gradients
from .moments import MomentObserver, Moments, NonFiniteActivationError, batch_moments, collect_activation_moments, merge_moments

__all__ = [
    "GradientError",
    "GradientObserver",
    "GradientPass",
    "GradientStep",
    "Moments",
    "MomentObserver",
    "NonFiniteActivationError",
    "all_reduce_sum",
    "batch_moments",
    "collect_activation_moments",
    "distributed_state",
    "make_loss",
    "merge_moments",
    "run_gradients",
    "shard_batches",
]
