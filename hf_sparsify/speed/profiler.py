"""A per-layer latency profiler: how long each prunable block takes at each candidate level, on the user's device,
dtype, batch, resolution and runtime — the cost SPDY's allocator (and any ``"dp"`` allocation of the structured
core) minimises against.

* **Structured levels** (:meth:`LatencyProfiler.group_times`): for every structure group (an attention's heads, an
  MLP's neurons, a ConvNeXt block's channels) and every candidate width, the group's owner module (the attention,
  the MLP, the ConvNeXt layer) is copied, shrunk to that width, and timed alone on the inputs it receives in the
  model (captured by one forward at the profiler's batch and resolution). Owners with the same signature (class,
  input shapes, parameter shapes) share their measurements: the 12 MLPs of a DeiT are timed once per width. The
  widths of one owner are timed in the same interleaved rounds.
* **Structured levels in context** (:meth:`LatencyProfiler.group_times_in_context`): blocks timed alone
  under-predict what shrinking them saves in the model (hot caches); instead, for every class of identical groups
  and every width, the whole model with all of the class shrunk to that width is timed against the dense model in
  the same interleaved rounds, and the saving is shared among the class's members.
* **Sparsity levels** (:meth:`LatencyProfiler.layer_times`): every ``nn.Linear`` dense and 2:4-sparse. Only the
  ``semi-structured`` runtime exploits 2:4 (on an Ampere-or-newer GPU); in every other runtime, and for any
  unstructured density, a sparse layer runs the dense kernels, so its time is the dense time (recorded as
  ``exploited: false``, not measured twice).
* **The whole model** (:meth:`LatencyProfiler.model_time`) and the time no group controls
  (:meth:`LatencyProfiler.uncontrolled_time`: embeddings, norms, residuals, head): the budget of a speed-up
  target includes it. :meth:`LatencyProfiler.predict` adds the per-block times of chosen widths to it; how well that
  sum predicts the measured model is in benchmarks/RESULTS.md.

**Cache**: measurements are kept in a JSON file keyed by the device (CPU model and torch threads, or GPU name and
capability), dtype, batch, resolution, runtime and the library versions (python, torch, CUDA, transformers,
hf_sparsify, onnxruntime). A file whose key differs — stale versions, another machine, other settings — is
detected (a warning names the fields that differ), ignored and re-measured, and replaced on the next save.

**Fallback**: with ``measure=False`` nothing is timed; values not in the cache are estimated from the MACs cost
model (:class:`~hf_sparsify.structured.MacsCost`), scaled to seconds by the measured whole-model time when the cache
has it, else left in MACs (:attr:`LatencyCost.unit` then says ``"MACs"``).

:class:`LatencyCost` wraps a profiler as a :class:`~hf_sparsify.structured.CostModel` (``unit = "seconds"``):

```python
>>> from hf_sparsify.adapters import get_adapter
>>> from hf_sparsify.speed import LatencyCost, LatencyProfiler, TimingRule
>>> from hf_sparsify.structured import CostModel, allowed_widths, select_groups
>>> groups = select_groups(get_adapter(model), ["mlp"])
>>> profiler = LatencyProfiler(batch_size=2, rule=TimingRule(min_repeats=3, max_seconds=1))
>>> cost = LatencyCost(profiler)
>>> isinstance(cost, CostModel), cost.unit
(True, 'seconds')
>>> tables = cost.group_costs(model, groups, [[192, 96]] * len(groups))   # seconds per batch at each width
>>> len(tables), len(tables[0]), all(t > 0 for row in tables for t in row)
(4, 2, True)
```
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..adapters import StructureGroup, get_adapter
from ..errors import HfSparsifyError
from ..structured.costs import MacsCost, attention_query_modules
from ..surgery import keep_units
from ..utils import get_logger
from .inputs import describe_device, dtype_name, example_inputs, library_versions, model_image_size, resolve_device, resolve_dtype
from .runtimes import check_runtime, prepare_module
from .timing import TimingRule, time_interleaved

__all__ = ["CACHE_FORMAT", "LatencyCost", "LatencyProfiler", "ProfilerError", "default_cache_dir"]

logger = get_logger(__name__)

#: the cache file's format; a file of another format is re-measured
CACHE_FORMAT = "hf_sparsify.latency/1"
#: the timing rule of blocks: shorter than a whole model's (many blocks, each fast)
BLOCK_RULE = TimingRule(warmup=2, warmup_seconds=0.2, min_repeats=7, max_repeats=100, precision=0.03, max_seconds=30.0)
#: the timing rule of whole-model variants measured in context (:meth:`LatencyProfiler.group_times_in_context`)
CONTEXT_RULE = TimingRule(warmup=1, warmup_seconds=0.2, min_repeats=5, max_repeats=50, precision=0.02, max_seconds=60.0)
#: most shrunk whole-model variants timed in one interleaved run with the dense model (bounds memory)
CONTEXT_CHUNK = 6


class ProfilerError(HfSparsifyError, ValueError):
    """The profiler cannot measure what was asked (a group whose tensors are outside its owner module, a width
    out of range, a level it does not know)."""


def default_cache_dir() -> Path:
    """``$HF_SPARSIFY_CACHE/latency``, else ``~/.cache/hf_sparsify/latency``."""
    root = os.environ.get("HF_SPARSIFY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_sparsify")
    return Path(root) / "latency"


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _relative(name: str, owner: str) -> str:
    if not owner:
        return name
    if not name.startswith(owner + "."):
        raise ProfilerError(f"{name} is not inside {owner}: the profiler times a group's owner module alone, so every tensor of the group must be inside it.")
    return name[len(owner) + 1:]


def _relative_group(group: StructureGroup) -> StructureGroup:
    """The group with names relative to its owner module (so that it shrinks a copy of the owner)."""
    return dataclasses.replace(
        group,
        name="",
        producers=[_relative(n, group.name) for n in group.producers],
        consumers=[_relative(n, group.name) for n in group.consumers],
        extra_params=[(_relative(n, group.name), d) for n, d in group.extra_params],
        observe=None,
        layer_scale=None,
    )


def _shrunk_copy(owner: nn.Module, group: StructureGroup, width: int) -> nn.Module:
    variant = copy.deepcopy(owner)
    if width != group.num_units:
        keep_units(variant, _relative_group(group), torch.arange(width))
    return variant


def _tensor_signature(args: tuple, kwargs: dict[str, Any]) -> list[Any]:
    out = []
    for leaf in pytree.tree_leaves((args, kwargs)):
        out.append([list(leaf.shape), str(leaf.dtype)] if isinstance(leaf, torch.Tensor) else repr(leaf))
    return out


class LatencyProfiler:
    """Measures (and caches) the latency of prunable blocks at candidate levels, and of whole models.

    Args:
        device, dtype, batch_size, image_size, runtime: where and how the times are measured (as
            :func:`~hf_sparsify.speed.benchmark`; ``image_size`` defaults to each model's config).
        cache: a JSON file path; ``True``: a file named after the key in :func:`default_cache_dir`; ``None`` /
            ``False``: in memory only.
        rule: the timing rule of blocks (default :data:`BLOCK_RULE`); whole models use ``model_rule``, the
            shrunk whole models of :meth:`group_times_in_context` ``context_rule`` (default :data:`CONTEXT_RULE`).
        measure: ``False`` times nothing: cached values are used, others are estimated from MACs.
    """

    def __init__(
        self,
        *,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "fp32",
        batch_size: int = 1,
        image_size: int | None = None,
        runtime: str = "eager",
        cache: str | os.PathLike | bool | None = None,
        rule: TimingRule | None = None,
        model_rule: TimingRule | None = None,
        context_rule: TimingRule | None = None,
        measure: bool = True,
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = int(batch_size)
        self.image_size = image_size
        self.runtime = runtime
        self.rule = rule or BLOCK_RULE
        self.model_rule = model_rule or TimingRule()
        self.context_rule = context_rule or CONTEXT_RULE
        self.measure = measure
        if measure:
            check_runtime(runtime, self.device, self.dtype)
        self._cache_option = cache
        self._key: dict[str, Any] | None = None
        self._path: Path | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self.sources: dict[tuple[str, Any], str] = {}
        self.stale_reason: str | None = None

    # ------------------------------------------------------------------------------------------ cache
    def key(self, model: nn.Module | None = None) -> dict[str, Any]:
        """What the measurements depend on: device, dtype, batch, resolution, runtime and library versions."""
        size = self.image_size or (model_image_size(model) if model is not None else None)
        return {
            "format": CACHE_FORMAT,
            "device": describe_device(self.device),
            "dtype": dtype_name(self.dtype),
            "batch_size": self.batch_size,
            "image_size": size,
            "runtime": self.runtime,
            "versions": library_versions(onnxruntime=self.runtime == "onnxruntime"),
        }

    def _ensure_cache(self, model: nn.Module) -> None:
        key = self.key(model)
        if self._key == key:
            return
        if self._key is not None:  # another resolution: another cache
            self.save()
            self._entries = {}
        self._key = key
        option = self._cache_option
        if option is None or option is False:
            self._path = None
            return
        self._path = default_cache_dir() / f"{_digest(key)}.json" if option is True else Path(option)
        self._load()

    def _load(self) -> None:
        assert self._path is not None and self._key is not None
        if not self._path.is_file():
            return
        try:
            stored = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            self.stale_reason = f"unreadable ({err})"
            logger.warning(f"hf_sparsify: the latency cache {self._path} is unreadable ({err}); re-measuring.")
            return
        stored_key = stored.get("key") if isinstance(stored, dict) else None
        if stored_key != self._key:
            differing = sorted(k for k in set(self._key) | set(stored_key or {}) if (stored_key or {}).get(k) != self._key.get(k))
            details = "; ".join(f"{k}: cached {(stored_key or {}).get(k)!r}, now {self._key.get(k)!r}" for k in differing)
            self.stale_reason = details
            logger.warning(f"hf_sparsify: the latency cache {self._path} was measured under other conditions ({details}); it is ignored and re-measured.")
            return
        self._entries = dict(stored.get("entries") or {})

    def save(self) -> Path | None:
        """Write the cache file (atomically); returns its path, or ``None`` for an in-memory profiler."""
        if self._path is None or self._key is None:
            return None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        tmp.write_text(json.dumps({"key": self._key, "entries": self._entries}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self._path)
        return self._path

    @property
    def cache_path(self) -> Path | None:
        return self._path

    # ------------------------------------------------------------------------------------------ inputs
    def _inputs(self, model: nn.Module) -> dict[str, Any]:
        return example_inputs(model, self.batch_size, self.image_size, device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def _capture(self, model: nn.Module, names: Sequence[str]) -> tuple[nn.Module, dict[str, tuple[tuple, dict]]]:
        """The model on the profiler's device and dtype (a copy), and the inputs each named module receives."""
        work = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        captured: dict[str, tuple[tuple, dict]] = {}
        handles = []

        def hook(name):
            def pre_hook(module, args, kwargs):
                if name not in captured:
                    clone = lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
                    captured[name] = (pytree.tree_map(clone, args), pytree.tree_map(clone, kwargs))

            return pre_hook

        for name in dict.fromkeys(names):
            handles.append(work.get_submodule(name).register_forward_pre_hook(hook(name), with_kwargs=True))
        try:
            work(**self._inputs(work))
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in captured]
        if missing:
            raise ProfilerError(f"{', '.join(missing[:3])} did not run in the model's forward: the profiler cannot time them.")
        return work, captured

    # ------------------------------------------------------------------------------------------ measuring
    def _time_variants(
        self,
        variants: dict[str, nn.Module],
        args: tuple,
        kwargs: dict[str, Any],
        runtimes: dict[str, str] | None = None,
        *,
        rule: TimingRule | None = None,
        whole_model: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Every variant (moved and cast in place) run on the same inputs, timed in one interleaved run under
        ``rule`` (default: the blocks' rule): ``{label: {"seconds", "p90", "repeats", "stable"}}``."""
        rule = rule or self.rule
        prepared = {}
        try:
            for label, module in variants.items():
                runtime = (runtimes or {}).get(label, self.runtime)
                prepared[label] = prepare_module(module, args, kwargs, runtime, device=self.device, dtype=self.dtype, whole_model=whole_model)
            timings = time_interleaved({k: p.run for k, p in prepared.items()}, rule, devices={self.device})
        finally:
            for p in prepared.values():
                p.close()
        return {k: {"seconds": t.median, "p90": t.p90, "repeats": t.repeats, "stable": t.stable(rule.precision)} for k, t in timings.items()}

    @torch.no_grad()
    def _input_signatures(self, model: nn.Module, names: Sequence[str]) -> dict[str, list[Any]]:
        """The shapes and dtypes of the inputs each named module receives, from one forward on the meta device
        (nothing is computed): part of every block's cache signature."""
        work = copy.deepcopy(model).to(device="meta", dtype=self.dtype).eval()
        signatures: dict[str, list[Any]] = {}
        handles = []

        def hook(name):
            def pre_hook(module, args, kwargs):
                signatures.setdefault(name, _tensor_signature(args, kwargs))

            return pre_hook

        for name in dict.fromkeys(names):
            handles.append(work.get_submodule(name).register_forward_pre_hook(hook(name), with_kwargs=True))
        try:
            inputs = example_inputs(model, self.batch_size, self.image_size, device="cpu", dtype=self.dtype)
            work(**{k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        finally:
            for h in handles:
                h.remove()
        return signatures

    def group_times(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[Sequence[int]]) -> list[list[float]]:
        """Seconds per batch of every group's owner module at each of its candidate widths (``widths[g]``).

        Measured (or read from the cache) once per distinct owner signature (class, parameter shapes, input
        shapes); with ``measure=False``, values not cached are MACs estimates (:attr:`sources` says which:
        ``"measured"``, ``"cached"``, ``"macs"``)."""
        if len(widths) != len(groups):
            raise ProfilerError(f"widths needs one list per group: {len(widths)} lists for {len(groups)} groups.")
        self._ensure_cache(model)
        return self._group_times(model, groups, widths, self._input_signatures(model, [g.name for g in groups]))

    def _group_times(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[Sequence[int]], inputs: dict[str, list[Any]]) -> list[list[float]]:
        """:meth:`group_times` with the groups' input signatures (:meth:`_input_signatures`) already known."""
        missing: dict[str, list[int]] = {}
        entry_of: list[str] = []
        for group, ws in zip(groups, widths):
            signature = self._group_signature(model, group, inputs)
            digest = _digest(signature)
            entry = self._entries.setdefault(digest, {"signature": signature, "times": {}})
            entry_of.append(digest)
            wanted = missing.setdefault(digest, [])
            for w in ws:
                if str(int(w)) not in entry["times"] and int(w) not in wanted:
                    if not 0 <= int(w) <= group.num_units:
                        raise ProfilerError(f"width {w} of {group.name} is outside [0, {group.num_units}].")
                    wanted.append(int(w))
        fresh: set[tuple[str, int]] = set()
        if self.measure and any(missing.values()):
            todo = {d: ws for d, ws in missing.items() if ws}
            first = {d: entry_of.index(d) for d in todo}
            work, captured = self._capture(model, [groups[i].name for i in first.values()])
            for digest, ws in todo.items():
                group = groups[first[digest]]
                owner = work.get_submodule(group.name)
                args, kwargs = captured[group.name]
                variants = {str(w): _shrunk_copy(owner, group, w) for w in ws}
                for label, stats in self._time_variants(variants, args, kwargs).items():
                    self._entries[digest]["times"][label] = stats
                    fresh.add((digest, int(label)))
            del work, captured
            self.save()
        out: list[list[float]] = []
        estimate = None
        for index, (group, ws) in enumerate(zip(groups, widths)):
            times = self._entries[entry_of[index]]["times"]
            row = []
            for w in ws:
                stats = times.get(str(int(w)))
                if stats is not None:
                    row.append(float(stats["seconds"]))
                    self.sources[(group.name, int(w))] = "measured" if (entry_of[index], int(w)) in fresh else "cached"
                else:
                    if estimate is None:
                        estimate = self._macs_estimate(model, groups)
                    row.append(estimate[index] * int(w))
                    self.sources[(group.name, int(w))] = "macs"
            out.append(row)
        return out

    @staticmethod
    def _group_signature(model: nn.Module, group: StructureGroup, inputs: dict[str, list[Any]]) -> dict[str, Any]:
        """What a group's owner-module time depends on: its class, kind, units, parameter and input shapes."""
        owner = model.get_submodule(group.name)
        return {
            "what": "group",
            "class": f"{type(owner).__module__}.{type(owner).__qualname__}",
            "kind": group.kind,
            "unit_size": group.unit_size,
            "dense_units": group.num_units,
            "producers": [_relative(n, group.name) for n in group.producers],
            "params": [[n, list(p.shape)] for n, p in owner.named_parameters()],
            "inputs": inputs.get(group.name),
        }

    def group_times_in_context(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[Sequence[int]]) -> list[list[float]]:
        """Like :meth:`group_times`, but every saving is measured **inside the whole model**.

        Blocks timed alone run with their weights and inputs hot in the caches and without the traffic of the
        rest of the model, so their savings under-predict what shrinking them saves in the model (by 12–52% on a
        DeiT-Small-sized ViT on CPU: benchmarks/RESULTS.md). Here the groups are split into classes of identical
        blocks (the same signature as :meth:`group_times`: the 12 MLPs of a DeiT are one class); for every class
        and width ``w`` the whole model with **every** member of the class shrunk to ``w`` is timed against the
        dense model in the same interleaved rounds (at most :data:`CONTEXT_CHUNK` variants per round), and each
        member's saving at ``w`` is ``(1 − T_w/T_dense)·T_model / members``, with ``T_model`` :meth:`model_time`.
        The returned tables subtract the in-context saving from each group's dense time at every other width;
        that dense time is the narrowest measured width's time alone plus its in-context saving (blocks save more in
        the model than alone; never less than the dense block's time alone, and never leaving the rest of the model
        a negative time), so that no width costs less than zero.

        Costs one whole-model timing per class and width, cached like the block times (keyed also by the whole
        model's signature). Widths neither measured nor cached (``measure=False``) fall back to
        :meth:`group_times`' values; :attr:`sources` says ``"in context"`` / ``"cached in context"`` per value.
        """
        if len(widths) != len(groups):
            raise ProfilerError(f"widths needs one list per group: {len(widths)} lists for {len(groups)} groups.")
        self._ensure_cache(model)
        inputs = self._input_signatures(model, [g.name for g in groups])
        dense_rows = self._group_times(model, groups, [[g.num_units] for g in groups], inputs)
        total = self.model_time(model)
        model_digest = _digest(self._model_signature(model))
        classes: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            classes.setdefault(_digest(self._group_signature(model, group, inputs)), []).append(index)
        fractions: dict[int, dict[int, float]] = {}  # group index -> width -> saved fraction of the model per member
        fresh: set[tuple[str, int]] = set()
        for block_digest, members in classes.items():
            signature = {"what": "context", "model": model_digest, "block": block_digest, "members": [groups[i].name for i in members]}
            digest = _digest(signature)
            entry = self._entries.setdefault(digest, {"signature": signature, "times": {}})
            dense_units = groups[members[0]].num_units
            wanted = sorted({int(w) for i in members for w in widths[i]} - {dense_units} - {int(k) for k in entry["times"]}, reverse=True)
            for w in wanted:
                if not 0 <= w <= dense_units:
                    raise ProfilerError(f"width {w} of {groups[members[0]].name} is outside [0, {dense_units}].")
            if self.measure and wanted:
                for start in range(0, len(wanted), CONTEXT_CHUNK):
                    chunk = wanted[start : start + CONTEXT_CHUNK]
                    for w, stats in self._time_in_context(model, [groups[i] for i in members], chunk).items():
                        entry["times"][str(w)] = stats
                        fresh.add((digest, w))
                self.save()
            for i in members:
                for w, stats in entry["times"].items():
                    fractions.setdefault(i, {})[int(w)] = float(stats["saved_fraction"]) / len(members)
                    self.sources[("context", groups[i].name, int(w))] = "in context" if (digest, int(w)) in fresh else "cached in context"
        dense_of = self._dense_in_context(model, groups, widths, inputs, [row[0] for row in dense_rows], fractions, total)
        fallback = None
        out: list[list[float]] = []
        for index, (group, ws) in enumerate(zip(groups, widths)):
            dense = dense_of[index]
            row = []
            for w in ws:
                w = int(w)
                if w == group.num_units:
                    row.append(dense)
                elif w in fractions.get(index, {}):
                    row.append(max(0.0, dense - fractions[index][w] * total))
                else:
                    if fallback is None:
                        fallback = self._group_times(model, groups, widths, inputs)
                    row.append(fallback[index][list(map(int, ws)).index(w)])
            out.append(row)
        return out

    def _dense_in_context(self, model, groups, widths, inputs, dense_alone: list[float], fractions: dict[int, dict[int, float]], total: float) -> list[float]:
        """Each group's dense time for the in-context tables: a block saves more in the model than alone, so its
        dense time there is taken as its narrowest measured width's time alone plus that width's in-context saving
        (never less than its dense time alone); the excess over the blocks' times alone is scaled down if it would
        leave the rest of the model a negative time."""
        narrowest = {i: min(w for w in map(int, ws) if w in fractions.get(i, {})) for i, ws in enumerate(widths) if any(int(w) in fractions.get(i, {}) for w in ws)}
        if not narrowest:
            return list(dense_alone)
        alone = self._group_times(model, [groups[i] for i in narrowest], [[w] for w in narrowest.values()], inputs)
        extra = [0.0] * len(groups)
        for (i, w), row in zip(narrowest.items(), alone):
            extra[i] = max(0.0, row[0] + fractions[i][w] * total - dense_alone[i])
        room = total - sum(dense_alone)
        scale = 1.0 if sum(extra) <= max(room, 0.0) else max(room, 0.0) / sum(extra)
        return [d + e * scale for d, e in zip(dense_alone, extra)]

    def _time_in_context(self, model: nn.Module, members: Sequence[StructureGroup], chunk: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The whole model with every one of ``members`` shrunk to each width of ``chunk``, timed with the dense
        model in one interleaved run: ``{width: {"saved_fraction", "seconds", "dense_seconds", "stable"}}``."""
        variants: dict[str, nn.Module] = {"dense": copy.deepcopy(model)}
        for w in chunk:
            variant = copy.deepcopy(model)
            for group in members:
                keep_units(variant, copy.copy(group), torch.arange(w))
            variants[str(w)] = variant
        timings = self._time_variants(variants, (), self._inputs(model), rule=self.context_rule, whole_model=True)
        dense = timings.pop("dense")
        return {
            int(label): {
                "saved_fraction": 1.0 - t["seconds"] / dense["seconds"],
                "seconds": t["seconds"],
                "dense_seconds": dense["seconds"],
                "stable": t["stable"] and dense["stable"],
            }
            for label, t in timings.items()
        }

    def _macs_estimate(self, model: nn.Module, groups: Sequence[StructureGroup]) -> list[float]:
        """Per-unit cost of each group: MACs × (measured seconds per MAC of the whole model, when cached)."""
        units = MacsCost(attention_query_modules(get_adapter(model, allow_generic=True))).unit_costs(model, groups)
        rate = self._seconds_per_mac(model)
        return [u * rate for u in units]

    def _seconds_per_mac(self, model: nn.Module) -> float:
        stats = self._entries.get(_digest(self._model_signature(model)))
        if stats and stats.get("times", {}).get("model"):
            macs = MacsCost().total(model)
            if macs:
                return float(stats["times"]["model"]["seconds"]) / macs
        return 1.0

    def estimates_in_macs(self, model: nn.Module) -> bool:
        """Whether unmeasured values for this model would be MACs rather than seconds (no measurement cached)."""
        self._ensure_cache(model)
        return not self.measure and self._seconds_per_mac(model) == 1.0

    @staticmethod
    def _model_signature(model: nn.Module) -> dict[str, Any]:
        return {"what": "model", "class": f"{type(model).__module__}.{type(model).__qualname__}", "params": [[n, list(p.shape)] for n, p in model.named_parameters()]}

    def model_time(self, model: nn.Module) -> float:
        """Seconds per batch of the whole model (measured with ``model_rule``, or cached; with ``measure=False``
        and nothing cached: its MACs per image)."""
        self._ensure_cache(model)
        signature = self._model_signature(model)
        digest = _digest(signature)
        entry = self._entries.setdefault(digest, {"signature": signature, "times": {}})
        if "model" not in entry["times"]:
            if not self.measure:
                self.sources[("model", digest)] = "macs"
                return float(MacsCost().total(model))
            work = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
            inputs = self._inputs(work)
            prepared = prepare_module(work, (), inputs, self.runtime, device=self.device, dtype=self.dtype, whole_model=True)
            try:
                timing = time_interleaved({"model": prepared.run}, self.model_rule, devices={self.device})["model"]
            finally:
                prepared.close()
            entry["times"]["model"] = {"seconds": timing.median, "p90": timing.p90, "repeats": timing.repeats, "stable": timing.stable(self.model_rule.precision)}
            self.sources[("model", digest)] = "measured"
            self.save()
        else:
            self.sources.setdefault(("model", digest), "cached")
        return float(entry["times"]["model"]["seconds"])

    def uncontrolled_time(self, model: nn.Module, groups: Sequence[StructureGroup]) -> float:
        """The model's time outside the groups' owner modules at their current widths: whole model − Σ groups."""
        blocks = self.group_times(model, groups, [[g.num_units] for g in groups])
        return self.model_time(model) - sum(row[0] for row in blocks)

    def predict(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[int]) -> float:
        """The predicted time of ``model`` with each group shrunk to ``widths``: its uncontrolled time plus the
        measured time of every group at its width."""
        tables = self.group_times(model, groups, [[g.num_units, int(w)] for g, w in zip(groups, widths)])
        return self.model_time(model) - sum(row[0] for row in tables) + sum(row[1] for row in tables)

    # ------------------------------------------------------------------------------------------ sparsity levels
    def layer_times(self, model: nn.Module, layers: Sequence[str] | None = None, levels: Sequence[str | float] = ("dense", "2:4")) -> dict[str, dict[str, dict[str, Any]]]:
        """Seconds per batch of every ``nn.Linear`` layer (default: the adapter's prunable Linear layers) at each
        level: ``"dense"``, ``"2:4"``, or an unstructured density (a float in (0, 1]).

        Returns ``{layer: {level: {"seconds", "exploited"}}}``: ``exploited`` is true where the runtime runs the
        level faster than dense kernels could (2:4 on the ``semi-structured`` runtime); elsewhere the level's time
        is the dense time."""
        for level in levels:
            if level not in ("dense", "2:4") and not (isinstance(level, float) and 0 < level <= 1):
                raise ProfilerError(f"level {level!r} is not 'dense', '2:4' or a density in (0, 1].")
        self._ensure_cache(model)
        if layers is None:
            layers = [layer.name for layer in get_adapter(model).prunable_layers() if isinstance(layer.module, nn.Linear)]
        exploit_24 = self.runtime == "semi-structured"
        for name in layers:
            if not isinstance(model.get_submodule(name), nn.Linear):
                raise ProfilerError(f"{name} is a {type(model.get_submodule(name)).__name__}; layer_times measures nn.Linear layers.")
        inputs = self._input_signatures(model, layers)
        work = captured = None
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name in layers:
            layer = model.get_submodule(name)
            inputs_sig = inputs.get(name)
            signature = {"what": "linear", "shape": list(layer.weight.shape), "bias": layer.bias is not None, "inputs": inputs_sig}
            digest = _digest(signature)
            entry = self._entries.setdefault(digest, {"signature": signature, "times": {}})
            wanted = ["dense"] + (["2:4"] if exploit_24 and "2:4" in levels else [])
            missing = [lv for lv in wanted if lv not in entry["times"]]
            if missing and self.measure:
                if captured is None:
                    work, captured = self._capture(model, layers)
                args, kwargs = captured[name]
                source = work.get_submodule(name)
                variants, runtimes = {}, {}
                for level in missing:
                    variant = copy.deepcopy(source)
                    if level == "2:4":
                        from .semi_structured import mask_2_4

                        with torch.no_grad():
                            variant.weight.mul_(mask_2_4(variant.weight))
                    else:
                        runtimes[level] = "eager" if exploit_24 else self.runtime
                    variants[level] = variant
                for label, stats in self._time_variants(variants, args, kwargs, runtimes).items():
                    entry["times"][label] = stats
            row = {}
            for level in levels:
                key = "2:4" if (level == "2:4" and exploit_24) else "dense"
                stats = entry["times"].get(key)
                seconds = float(stats["seconds"]) if stats else None
                if seconds is None:  # measure=False and nothing cached: MACs per image of the layer
                    seconds = float(layer.weight.numel())
                row[str(level)] = {"seconds": seconds, "exploited": key != "dense"}
            out[name] = row
        if self.measure:
            self.save()
        return out


class LatencyCost:
    """A :class:`~hf_sparsify.structured.CostModel` of measured latency (``unit = "seconds"`` per batch): the
    whole model's time is :meth:`total`, each group's time at each candidate width is :meth:`group_costs`
    (non-linear in the width: use the ``"dp"`` allocation). With a profiler that does not measure and a cache that
    lacks the values, costs fall back to MACs (``unit`` then says ``"MACs"``).

    Args:
        profiler: a :class:`LatencyProfiler` (default: one on the CPU, fp32, batch 1, eager, in memory);
            ``settings`` build one instead.
        in_context: measure every width's saving inside the whole model
            (:meth:`LatencyProfiler.group_times_in_context`) instead of timing owner blocks alone.
    """

    def __init__(self, profiler: LatencyProfiler | None = None, *, in_context: bool = False, **settings: Any):
        if profiler is not None and settings:
            raise ProfilerError("give a profiler or its settings, not both.")
        self.profiler = profiler or LatencyProfiler(**settings)
        self.in_context = in_context
        self.unit = "seconds"

    def total(self, model: nn.Module) -> float:
        if self.profiler.estimates_in_macs(model):
            self.unit = "MACs"
            return float(MacsCost().total(model))
        return self.profiler.model_time(model)

    def group_costs(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[Sequence[int]]) -> list[list[float]]:
        if self.profiler.estimates_in_macs(model):
            self.unit = "MACs"
            return self.profiler.group_times(model, groups, widths)
        if self.in_context:
            return self.profiler.group_times_in_context(model, groups, widths)
        return self.profiler.group_times(model, groups, widths)
