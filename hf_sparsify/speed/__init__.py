"""Measured speed and deployment: how fast a (pruned) model runs where it runs, and the runtimes that turn
pruning into speed.

* :mod:`.benchmark`: :func:`benchmark` (``hf-sparsify benchmark``): median / p90 latency, spread, throughput,
  MACs and parameters of a model in a runtime, device, dtype, batch and resolution; against a baseline timed in
  the same interleaved rounds, the ratio.
* :mod:`.timing`: the timing rule (warm-up, interleaved rounds, stop when the median's 95% interval is within ±2%).
* :mod:`.runtimes`: ``eager``, ``compile`` (torch.compile), ``onnxruntime`` and ``semi-structured`` (2:4 kernels
  on NVIDIA GPUs); :func:`check_runtime` refuses what this machine cannot run.
* :mod:`.onnx`: :func:`export_onnx` (``hf-sparsify export``): ONNX graphs of pruned models with per-layer widths
  and head counts, checked in ONNX Runtime against PyTorch.
* :mod:`.semi_structured`: 2:4-pruned ``nn.Linear`` layers converted to ``torch.sparse.to_sparse_semi_structured``.
* :mod:`.profiler`: :class:`LatencyProfiler` (per-block time at each width or sparsity level, cached per device,
  dtype, batch, resolution, runtime and library versions) and :class:`LatencyCost`, a
  :class:`~hf_sparsify.structured.CostModel` of measured latency for the structured core's allocators (SPDY).

See docs/speed.md.
"""

from .benchmark import BaselineMismatchError, BenchmarkResult, benchmark, check_baseline, model_macs
from .inputs import SpeedInputError, example_inputs, load_model, resolve_device, resolve_dtype
from .onnx import OnnxExport, OnnxExportError, OnnxRuntimeMissingError, export_onnx, sync_head_counts, verify_onnx
from .profiler import LatencyCost, LatencyProfiler, ProfilerError, default_cache_dir
from .runtimes import RUNTIMES, PreparedModel, RuntimeUnavailableError, check_runtime, prepare_model, prepare_module
from .semi_structured import SemiStructuredUnavailableError, check_semi_structured_support, is_2_4_sparse, semi_structured_layers, to_semi_structured
from .timing import Timing, TimingRule, time_interleaved

__all__ = [
    "RUNTIMES",
    "BaselineMismatchError",
    "BenchmarkResult",
    "LatencyCost",
    "LatencyProfiler",
    "OnnxExport",
    "OnnxExportError",
    "OnnxRuntimeMissingError",
    "PreparedModel",
    "ProfilerError",
    "RuntimeUnavailableError",
    "SemiStructuredUnavailableError",
    "SpeedInputError",
    "Timing",
    "TimingRule",
    "benchmark",
    "check_baseline",
    "check_runtime",
    "check_semi_structured_support",
    "default_cache_dir",
    "example_inputs",
    "export_onnx",
    "is_2_4_sparse",
    "load_model",
    "model_macs",
    "prepare_model",
    "prepare_module",
    "resolve_device",
    "resolve_dtype",
    "semi_structured_layers",
    "sync_head_counts",
    "time_interleaved",
    "to_semi_structured",
    "verify_onnx",
]
