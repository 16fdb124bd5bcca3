"""``benchmark``: the measured latency of a model where it runs — device, dtype, batch, resolution, runtime —
alone or against a baseline timed in the same rounds (``hf-sparsify benchmark``).

The timing rule is :class:`~hf_sparsify.speed.timing.TimingRule`: warm-up, interleaved rounds (the model and the
baseline alternate, so load changes hit both), stop when each median's 95% confidence interval is within ±2% (at
least 10, at most 200 rounds, 120 s). On a shared machine the **ratio** is the figure that holds; both the ratio
of the medians (``speedup``) and the median of the per-round ratios (``speedup_paired``) are reported, beside the
MACs ratio, so that a speed-up can be read against what the MACs promised (``speedup_vs_macs``).

```python
>>> from hf_sparsify.speed import TimingRule, benchmark
>>> pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(pruning_ratio=0.5, num_calibration_samples=16), calibration)
>>> result = benchmark(pruned, baseline=model, batch_size=4, rule=TimingRule(min_repeats=3, max_seconds=2))
>>> result.runtime, result.device["type"], result.dtype, result.batch_size, result.macs < result.baseline["macs"]
('eager', 'cpu', 'fp32', 4, True)
```
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters import get_adapter
from ..errors import HfSparsifyError
from ..structured.costs import attention_query_modules, count_macs, count_params
from .inputs import describe_device, dtype_name, library_versions, load_model, model_image_size, resolve_device, resolve_dtype
from .runtimes import check_runtime, prepare_model
from .semi_structured import semi_structured_layers
from .timing import TimingRule, paired_ratio, time_interleaved

__all__ = ["BaselineMismatchError", "BenchmarkResult", "benchmark", "card_entry_from_dict", "check_baseline", "model_macs"]


class BaselineMismatchError(HfSparsifyError, ValueError):
    """The baseline is not the same architecture or input as the model: their ratio would mean nothing."""


def model_macs(model: nn.Module, image_size: int | None = None) -> dict[str, int]:
    """MACs per image (``total``: every weight; ``effective``: non-zero weights only) at ``image_size``."""
    adapter = get_adapter(model, allow_generic=True)
    inputs = None
    if image_size and image_size != model_image_size(model):
        from .inputs import example_inputs

        inputs = example_inputs(model, 1, image_size)
    counted = count_macs(model, attention_query_modules(adapter), inputs=inputs)
    return {"total": int(counted["total"]), "effective": int(counted["effective"])}


def _architecture(model: nn.Module) -> tuple[str, str]:
    return type(model).__name__, str(getattr(getattr(model, "config", None), "model_type", None))


def check_baseline(model: nn.Module, baseline: nn.Module) -> None:
    """Refuse a baseline of another architecture (model class and ``model_type``) or another input (image size,
    channels): the ratio of their times would compare different tasks."""
    if _architecture(model) != _architecture(baseline):
        (a, at), (b, bt) = _architecture(model), _architecture(baseline)
        raise BaselineMismatchError(f"the baseline is a {b} ({bt}) and the model a {a} ({at}): compare a pruned model with the dense model it came from, of the same architecture.")
    sizes = (model_image_size(model), getattr(model.config, "num_channels", 3)), (model_image_size(baseline), getattr(baseline.config, "num_channels", 3))
    if sizes[0] != sizes[1]:
        raise BaselineMismatchError(
            f"the baseline takes {sizes[1][1]}-channel images of {sizes[1][0]} px and the model {sizes[0][1]}-channel images of {sizes[0][0]} px: "
            "a speed ratio needs the same input; compare models of the same input size."
        )


@dataclass
class BenchmarkResult:
    """The figures of one benchmark run (times in milliseconds per batch).

    ``timing``: median, p90, p10, min, the median's 95% confidence interval, spread and repeats (see
    :meth:`~hf_sparsify.speed.timing.Timing.to_dict`); ``throughput``: images per second at the median;
    ``macs`` / ``effective_macs``: per image; ``baseline``: the same for the baseline, with ``speedup`` (ratio of
    the medians), ``speedup_paired`` (median of the per-round ratios), ``macs_ratio`` (baseline MACs / model
    MACs) and ``speedup_vs_macs`` (``speedup / macs_ratio``: 1.0 when the time falls as the MACs do).
    """

    model: str
    runtime: str
    device: dict[str, Any]
    dtype: str
    batch_size: int
    image_size: int
    timing: dict[str, Any]
    throughput: float
    macs: int
    effective_macs: int
    params: int
    versions: dict[str, str]
    rule: dict[str, Any]
    stable: bool
    load_average: dict[str, list[float]] | None = None
    date: str = ""
    baseline: dict[str, Any] | None = None
    speedup: float | None = None
    speedup_paired: float | None = None
    macs_ratio: float | None = None
    speedup_vs_macs: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "runtime": self.runtime,
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            **self.timing,
            "throughput_images_per_s": round(self.throughput, 3),
            "macs": self.macs,
            "effective_macs": self.effective_macs,
            "params": self.params,
            "stable": self.stable,
        }
        if self.baseline is not None:
            out.update(
                baseline=self.baseline,
                speedup=round(self.speedup, 4),
                speedup_paired=round(self.speedup_paired, 4),
                macs_ratio=round(self.macs_ratio, 4),
                speedup_vs_macs=round(self.speedup_vs_macs, 4),
            )
        out.update(versions=self.versions, rule=self.rule, load_average=self.load_average, date=self.date, notes=self.notes)
        return out

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(self.to_dict())

    def card_entry(self) -> dict[str, Any]:
        """The model card's speed row (a ``pruning_speedups`` entry) of a run with a baseline."""
        return card_entry_from_dict(self.to_dict())


def card_entry_from_dict(data: dict[str, Any], what: str = "the benchmark result") -> dict[str, Any]:
    """The model card's speed row from a benchmark's JSON (:meth:`BenchmarkResult.to_dict`): device, runtime,
    dtype, batch, both medians, the speed-up, and notes with the MACs ratio and how the figure was taken.

    Raises:
        BaselineMismatchError: the run had no baseline (a card's speed figure is a measured ratio, never MACs).
    """
    if not isinstance(data, dict) or not data.get("baseline") or data.get("speedup") is None:
        raise BaselineMismatchError(f"{what} has no baseline: a model card's speed row is a measured ratio against the dense model (benchmark with --baseline).")
    device = data.get("device") or {}
    name = device.get("name", device.get("type", "unknown"))
    if device.get("type") == "cpu":
        name = f"CPU ({name}, {device.get('threads')} threads)"
    notes = (
        f"hf-sparsify benchmark: median of {data.get('repeats')} interleaved runs at {data.get('image_size')} px; MACs ratio "
        f"{data.get('macs_ratio', float('nan')):.2f}× ({data.get('speedup_vs_macs', float('nan')):.0%} of it measured); paired ratio "
        f"{data.get('speedup_paired', float('nan')):.2f}×; torch {(data.get('versions') or {}).get('torch')}; {str(data.get('date', ''))[:10]}"
    )
    return {
        "device": name,
        "dtype": data.get("dtype"),
        "batch_size": data.get("batch_size"),
        "runtime": data.get("runtime"),
        "dense_ms": data["baseline"]["median_ms"],
        "pruned_ms": data["median_ms"],
        "speedup": round(float(data["speedup"]), 4),
        "notes": notes,
    }


def _name(source) -> str:
    if isinstance(source, nn.Module):
        return str(getattr(source, "name_or_path", "") or type(source).__name__)
    return str(source)


def benchmark(
    model: nn.Module | str | os.PathLike,
    *,
    baseline: nn.Module | str | os.PathLike | None = None,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "fp32",
    batch_size: int = 1,
    image_size: int | None = None,
    runtime: str = "eager",
    rule: TimingRule | None = None,
    seed: int = 0,
) -> BenchmarkResult:
    """Time ``model`` (a model, or a folder / Hub id hf_sparsify's loader reads) on ``batch_size`` random images in
    ``runtime`` on ``device`` in ``dtype``; with ``baseline``, time both in the same interleaved rounds and report
    their ratio. The given models are not changed (copies are moved, cast and prepared).

    Raises:
        RuntimeUnavailableError: this machine cannot run ``runtime`` on ``device`` in ``dtype``.
        BaselineMismatchError: the baseline is another architecture or takes another input.
        SpeedInputError: a device, dtype or size that cannot be used.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    check_runtime(runtime, device, dtype)
    rule = rule or TimingRule()
    subject = load_model(model, what="model")
    reference = load_model(baseline, what="baseline") if baseline is not None else None
    if reference is not None:
        check_baseline(subject, reference)
    size = image_size or model_image_size(subject)

    prepared = {"model": prepare_model(subject, runtime, device=device, dtype=dtype, batch_size=batch_size, image_size=size, seed=seed)}
    if reference is not None:
        baseline_runtime = runtime
        if runtime == "semi-structured" and not semi_structured_layers(reference):
            baseline_runtime = "eager"  # the dense baseline has nothing to convert: it runs the dense kernels
            prepared["model"].notes.append("the baseline has no 2:4 layers and runs eager (dense kernels)")
        prepared["baseline"] = prepare_model(reference, baseline_runtime, device=device, dtype=dtype, batch_size=batch_size, image_size=size, seed=seed)
    try:
        load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        timings = time_interleaved({k: p.run for k, p in prepared.items()}, rule, devices={device})
        load_after = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        notes = [note for p in prepared.values() for note in p.notes]
        for p in prepared.values():
            p.close()
    timing = timings["model"]
    macs = model_macs(subject, size)
    result = BenchmarkResult(
        model=_name(model),
        runtime=runtime,
        device=describe_device(device),
        dtype=dtype_name(dtype),
        batch_size=batch_size,
        image_size=size,
        timing=timing.to_dict(),
        throughput=batch_size / timing.median,
        macs=macs["total"],
        effective_macs=macs["effective"],
        params=count_params(subject),
        versions=library_versions(onnxruntime=runtime == "onnxruntime"),
        rule=rule.to_dict(),
        stable=all(t.stable(rule.precision) for t in timings.values()),
        load_average={"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]} if load_before and load_after else None,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=list(dict.fromkeys(notes)),
    )
    if reference is not None:
        base = timings["baseline"]
        base_macs = model_macs(reference, size)
        result.baseline = {
            "model": _name(baseline),
            **base.to_dict(),
            "throughput_images_per_s": round(batch_size / base.median, 3),
            "macs": base_macs["total"],
            "effective_macs": base_macs["effective"],
            "params": count_params(reference),
        }
        result.speedup = base.median / timing.median
        result.speedup_paired = paired_ratio(base, timing)
        result.macs_ratio = base_macs["total"] / macs["total"] if macs["total"] else float("nan")
        result.speedup_vs_macs = result.speedup / result.macs_ratio
    if not result.stable:
        result.notes.append(f"the median did not settle within ±{rule.precision:.0%} in {timing.repeats} rounds ({rule.max_seconds:g} s at most): the machine was noisy")
    return result
