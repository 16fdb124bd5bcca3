"""Observers collect what methods need over calibration batches, in one pass where possible: activation moments
(VBP), masked mini-batch gradients folded into Fisher blocks (CAP, WoodFisher), Hessian-vector products (SOSP),
layer timings (SPDY). Data parallelism (Accelerate) and the cross-process reductions live here, once for all."""

from .distributed import all_reduce_sum, distributed_state, shard_batches

__all__ = ["all_reduce_sum", "distributed_state", "shard_batches"]
