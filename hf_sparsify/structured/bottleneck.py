"""Bottleneck report: the per-group kept widths a global structured ranking produced, and the groups it pruned least.

A structured method with a global allocation (VBP's default, SOSP) ranks every unit of every selected group against
each other, so how much of each MLP, attention or ConvNeXt block survives is an *outcome* of the ranking. The
groups it pruned least are the model's **bottleneck candidates**: the SOSP paper widens such layers ×2 and prunes
again ("expand-pruning"; see :func:`hf_sparsify.expand` and ``examples/expand_then_prune.py``).

:func:`bottleneck_report` reads the ranking's outcome from

* a pruned model in memory (its ``pruning_result``), or a reloaded one (the ``sparsity_summary.json`` of the folder
  it was loaded from, else the dense widths its config recorded),
* a folder ``save_pretrained`` wrote,
* a :class:`~hf_sparsify.PruningResult` (or its ``to_dict()``),

and gives a :class:`BottleneckReport`: a table (``str``), a dict / JSON (``to_dict`` / ``to_json``), a PNG bar chart
(``save_chart``) and the candidates (``candidates()``).

**How candidates are chosen.** A group's *kept fraction* is its kept width over its width before that pruning step.
Fractions are compared within a kind (MLP neurons, heads and channels are ranked together, but their fractions are
not on one scale): by default a candidate keeps at least ``margin`` (10 points) more than the median kept fraction of
its kind; ``candidates(k=3)`` takes the ``k`` groups with the highest kept fractions instead (model order breaks ties).

```python
>>> pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(target_macs_reduction=0.35, num_calibration_samples=64), calibration, image_processor=processor)
>>> report = hf_sparsify.bottleneck_report(pruned)
>>> [(row.block_index, row.kept, row.dense) for row in report.rows]
[(0, 120, 192), (1, 8, 192), (2, 32, 192), (3, 104, 192)]
>>> [row.name for row in report.candidates()]
['vit.layers.0.mlp', 'vit.layers.3.mlp']
>>> report.save_chart(tmp_dir / "bottlenecks.png")
True
```
"""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from ..adapters import StructureGroup, UnsupportedModelError, get_adapter
from ..errors import HfSparsifyError
from ..io.summary import SUMMARY_NAME, _read_json
from ..methods.base import PruningResult
from ..surgery.shapes import METADATA_KEY, dense_config
from ..utils import get_logger
from .groups import KIND_NOUNS

__all__ = [
    "DEFAULT_MARGIN",
    "GLOBAL_ALLOCATIONS",
    "BottleneckReport",
    "BottleneckReportError",
    "BottleneckRow",
    "bottleneck_report",
    "card_bottlenecks",
    "draw_bottleneck_panel",
]

logger = get_logger(__name__)

#: default margin of :meth:`BottleneckReport.candidates`: 10 points of kept fraction above the median of the kind
DEFAULT_MARGIN = 0.1
#: allocation strategies whose per-group widths are an outcome of one ranking across groups (the card shows those)
GLOBAL_ALLOCATIONS = ("global", "dp")
_CANDIDATE_COLOR = "#f0ad4e"
_OTHER_COLOR = "#5bc0de"


class BottleneckReportError(HfSparsifyError, ValueError):
    """There is no structured pruning to report on (an unpruned model, an unstructured method's result)."""


@dataclass
class BottleneckRow:
    """One structure group of a :class:`BottleneckReport`.

    Attributes:
        name: the group's owner module (``"vit.layers.3.mlp"``, ``"convnext.encoder.stages.1.layers.0"``): what
            :func:`hf_sparsify.expand` takes.
        kind: ``"mlp_neuron"``, ``"attention_head"`` or ``"conv_channel"``.
        block: the enclosing block's name; ``block_index`` its index among the model's blocks (``None`` when the
            report was read from a pruning result alone and the index cannot be told from the name).
        kept: the width the pruning left; ``dense``: the width before that pruning step.
        original: the width of the model before any pruning or widening, when recorded and different from ``dense``.
    """

    name: str
    kind: str
    block: str | None
    block_index: int | None
    kept: int
    dense: int
    original: int | None = None

    @property
    def fraction(self) -> float:
        """Kept fraction: ``kept / dense``."""
        return self.kept / self.dense if self.dense else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "block": self.block,
            "block_index": self.block_index,
            "kept": self.kept,
            "dense": self.dense,
            "kept_fraction": round(self.fraction, 6),
        }
        if self.original is not None:
            out["original"] = self.original
        return out


@dataclass
class BottleneckReport:
    """Per-group kept widths of a structured pruning step and its bottleneck candidates (see the module docstring).

    Attributes:
        rows: one :class:`BottleneckRow` per group the pruning step ranked, in model order.
        method: the pruning method's registry name, if known.
        allocation: how the budget was spread (``"global"``, ``"dp"``, ``"per_layer"``), if known. With
            ``"per_layer"`` every group keeps the same fraction and no group stands out.
        source: where the widths were read (``"pruning result"``, ``"saved summary"``, ``"config metadata"``).
        margin: the default margin of :meth:`candidates`.
        notes: sentences printed under the table (e.g. how the widths were read).
    """

    rows: list[BottleneckRow]
    method: str | None = None
    allocation: str | None = None
    source: str = "pruning result"
    margin: float = DEFAULT_MARGIN
    notes: list[str] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        """The median kept fraction of each kind."""
        kinds: dict[str, list[float]] = {}
        for row in self.rows:
            kinds.setdefault(row.kind, []).append(row.fraction)
        return {kind: float(statistics.median(values)) for kind, values in kinds.items()}

    def candidates(self, k: int | None = None, *, margin: float | None = None, kinds: Sequence[str] | None = None) -> list[BottleneckRow]:
        """The bottleneck candidates, highest kept fraction first (model order breaks ties).

        Args:
            k: take the ``k`` groups with the highest kept fractions (across the selected kinds); ``None``: every group
                whose kept fraction is at least ``margin`` above the median kept fraction of its kind.
            margin: the margin of the default rule (default: the report's ``margin``, 0.1 = 10 points).
            kinds: only these kinds (``"mlp"``, ``"heads"``, ``"channels"`` or the kind constants).
        """
        from .groups import resolve_kinds

        rows = self.rows
        if kinds is not None:
            wanted = set(resolve_kinds(kinds))
            rows = [r for r in rows if r.kind in wanted]
        order = sorted(range(len(rows)), key=lambda i: (-rows[i].fraction, i))
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise BottleneckReportError(f"k must be a whole number ≥ 0 (the number of candidates), got {k!r}.")
            return [rows[i] for i in order[:k]]
        margin = self.margin if margin is None else float(margin)
        medians = self.medians()
        return [rows[i] for i in order if rows[i].fraction >= medians[rows[i].kind] + margin - 1e-12]

    def rule(self) -> str:
        """The default candidate rule, in words."""
        medians = ", ".join(f"{KIND_NOUNS.get(kind, kind)}s {value:.1%}" for kind, value in self.medians().items())
        return f"kept fraction ≥ the median of its kind + {100 * self.margin:g} points (medians: {medians})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "allocation": self.allocation,
            "source": self.source,
            "rule": {"margin": self.margin, "medians": {k: round(v, 6) for k, v in self.medians().items()}},
            "groups": [row.to_dict() for row in self.rows],
            "candidates": [row.name for row in self.candidates()],
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        candidates = {row.name for row in self.candidates()}
        show_original = any(row.original is not None for row in self.rows)
        header = ["group", "kind", "block", "kept", "of", "kept fraction", ""]
        if show_original:
            header.insert(5, "original")
        table = [header]
        for row in self.rows:
            cells = [
                row.name,
                KIND_NOUNS.get(row.kind, row.kind),
                "" if row.block_index is None else str(row.block_index),
                str(row.kept),
                str(row.dense),
                f"{row.fraction:.1%}",
                "*" if row.name in candidates else "",
            ]
            if show_original:
                cells.insert(5, "" if row.original is None else str(row.original))
            table.append(cells)
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        what = ", ".join(x for x in (self.method, f"{self.allocation} allocation" if self.allocation else None) if x)
        lines = [f"Bottleneck report{': ' + what if what else ''} (from the {self.source})"]
        for n, cells in enumerate(table):
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths if w).rstrip())
        lines.append("")
        lines.append(f"* bottleneck candidates: {self.rule()}: {', '.join(r.name for r in self.candidates()) or 'none'}.")
        if self.allocation == "per_layer":
            lines.append("The per_layer allocation gives every group the same fraction: there are no bottlenecks to read off.")
        lines.extend(self.notes)
        return "\n".join(lines)

    def save_chart(self, path: str | os.PathLike) -> bool:
        """Draw the kept fraction per group as a PNG bar chart (candidates highlighted, the median of each kind
        dashed), with matplotlib's Agg canvas. Returns ``False`` (and logs why) when matplotlib is not installed."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            logger.info("hf_sparsify: matplotlib is not installed, no bottleneck chart (pip install 'hf_sparsify[plot]').")
            return False
        width = min(24.0, max(6.0, 0.3 * len(self.rows) + 2))
        fig = Figure(figsize=(width, 3.4), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        draw_bottleneck_panel(fig.subplots(), self)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
        return True


# --------------------------------------------------------------------------------------------- drawing
def _short(name: str) -> str:
    name = re.sub(r"^(vit|deit|dinov2|dinov2_with_registers|convnext|convnextv2|model)\.", "", name)
    return name.replace("encoder.", "").replace("layers.", "L").replace("layer.", "L").replace("stages.", "S").replace("attention", "attn")


def draw_bottleneck_panel(ax, report: BottleneckReport) -> None:
    """Draw ``report`` on a matplotlib axis: kept fraction per group, candidates highlighted, medians dashed."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    candidates = {row.name for row in report.candidates()}
    values = [100 * row.fraction for row in report.rows]
    colors = [_CANDIDATE_COLOR if row.name in candidates else _OTHER_COLOR for row in report.rows]
    ax.bar(range(len(values)), values, color=colors)
    for kind, median in report.medians().items():
        xs = [i for i, row in enumerate(report.rows) if row.kind == kind]
        ax.hlines(100 * median, min(xs) - 0.4, max(xs) + 0.4, colors="#555555", linestyles="dashed", linewidth=1)
    ax.set_ylim(0, 110)
    ax.set_ylabel("kept (%)")
    what = ", ".join(x for x in (report.method, report.allocation) if x)
    ax.set_title(f"Kept fraction per structure group{f' ({what})' if what else ''}", fontsize=10)
    ax.set_xticks(range(len(values)), [_short(row.name) for row in report.rows], rotation=90, fontsize=7)
    handles = [
        Patch(color=_CANDIDATE_COLOR, label=f"bottleneck candidate (median + {100 * report.margin:g} points)"),
        Patch(color=_OTHER_COLOR, label="other groups"),
        Line2D([], [], color="#555555", linestyle="dashed", linewidth=1, label="median of the kind"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.8)


# --------------------------------------------------------------------------------------------- building
_BLOCK = re.compile(r"^(.*\.\d+)(?:\.[^.\d][^.]*)*$")


def _block_from_name(name: str) -> tuple[str | None, int | None]:
    """The block of a group told from its name alone: the longest prefix ending in an index (``vit.layers.3`` of
    ``vit.layers.3.mlp``); its index when the path holds only one (ViT-style ``layers.3``, not ConvNeXt's
    ``stages.1.layers.2``)."""
    match = _BLOCK.match(name)
    if not match:
        return None, None
    block = match.group(1)
    numbers = re.findall(r"\.(\d+)(?=\.|$)", block)
    return block, int(numbers[0]) if len(numbers) == 1 else None


def _structured_layers(record: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    layers = record.get("layers")
    if not isinstance(layers, Mapping):
        return {}
    return {name: facts for name, facts in layers.items() if isinstance(facts, Mapping) and {"kind", "width", "dense_width"} <= set(facts)}


def _from_record(
    record: Mapping[str, Any],
    *,
    blocks: Mapping[str, tuple[str, int]] | None = None,
    original: Mapping[str, int] | None = None,
    source: str,
    margin: float,
) -> BottleneckReport:
    layers = _structured_layers(record)
    if not layers:
        method = record.get("method")
        raise BottleneckReportError(
            f"the pruning result{f' of {method!r}' if method else ''} records no structure widths: only a structured method "
            "(vbp, sosp-h, ...) ranks MLP neurons, heads or channels. Prune with one, e.g. "
            "hf_sparsify.prune(model, hf_sparsify.VBPConfig(target_macs_reduction=0.35), calibration)."
        )
    rows = []
    for name, facts in layers.items():
        block, index = (blocks or {}).get(name) or _block_from_name(name)
        before = (original or {}).get(name)
        rows.append(
            BottleneckRow(
                name=name,
                kind=str(facts["kind"]),
                block=block,
                block_index=index,
                kept=int(facts["width"]),
                dense=int(facts["dense_width"]),
                original=int(before) if before is not None and int(before) != int(facts["dense_width"]) else None,
            )
        )
    info = record.get("info") or {}
    return BottleneckReport(rows=rows, method=record.get("method"), allocation=info.get("allocation"), source=source, margin=margin)


def _groups_of(model: nn.Module) -> list[StructureGroup]:
    adapter = get_adapter(model, allow_generic=True)
    if adapter.family == "generic":
        raise UnsupportedModelError(
            f"bottleneck_report reads the MLPs, heads and channels a model adapter knows, and {type(model).__name__} "
            f"(model_type={getattr(getattr(model, 'config', None), 'model_type', None)!r}) has no adapter: it supports ViT, DeiT, "
            "DINOv2 and ConvNeXt(V2)."
        )
    return adapter.structure_groups()


def _record_of(result: Any) -> Mapping[str, Any] | None:
    if isinstance(result, PruningResult):
        return result.to_dict()
    if isinstance(result, Mapping):
        return result
    return None


def _saved_record(model: nn.Module, groups: list[StructureGroup]) -> Mapping[str, Any] | None:
    """The pruning record of the local folder the model was loaded from, when its widths are the model's."""
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not name or not (Path(str(name)) / SUMMARY_NAME).is_file():
        return None
    try:
        record = _read_json(Path(str(name)) / SUMMARY_NAME).get("pruning")
    except HfSparsifyError:
        return None
    layers = _structured_layers(record or {})
    widths = {g.name: g.num_units for g in groups}
    if not layers or any(widths.get(n) != int(f["width"]) for n, f in layers.items()):
        return None
    return record


def _from_metadata(model: nn.Module, groups: list[StructureGroup], meta: Mapping[str, Any], *, margin: float) -> BottleneckReport | None:
    """Rows from the dense widths the config recorded before the first pruning (and any widening since): the kinds
    of which some group is narrower than that reference, every group of those kinds."""
    reference = dict(meta.get("dense_widths") or {})
    history = meta.get("history") if isinstance(meta.get("history"), list) else []
    for expansion in meta.get("expansions") or []:
        if int(expansion.get("after_step", 0)) < len(history):  # widened before the last pruning step
            for name, (_, wide) in (expansion.get("widths") or {}).items():
                reference[name] = int(wide)
    pruned_kinds = {g.kind for g in groups if reference.get(g.name, g.num_units) > g.num_units}
    if not pruned_kinds:
        return None
    rows = [
        BottleneckRow(name=g.name, kind=g.kind, block=g.block, block_index=g.block_index, kept=g.num_units, dense=int(reference.get(g.name, g.num_units)))
        for g in groups
        if g.kind in pruned_kinds
    ]
    method = history[-1].get("method") if history and isinstance(history[-1], Mapping) else meta.get("method")
    return BottleneckReport(
        rows=rows,
        method=method,
        allocation=None,
        source="config metadata",
        margin=margin,
        notes=["Read from the dense widths the config recorded (no pruning result was available): the allocation is unknown, and a model pruned in several steps shows its widths relative to the widths before the first."],
    )


def _blocks_from_config(config: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Group name → (block, block index), from a saved config (the dense model of the config built on the meta
    device: no memory); empty when the architecture cannot be built."""
    try:
        import torch
        import transformers

        arch = (config.get("architectures") or [None])[0]
        model_class = getattr(transformers, arch) if arch else None
        config_class = transformers.AutoConfig.for_model(config["model_type"]).__class__
        data = {k: v for k, v in config.items() if k not in ("per_layer_config", METADATA_KEY, "transformers_version")}
        built = config_class.from_dict(data)
        if model_class is None:
            return {}
        with torch.device("meta"):
            skeleton = model_class(dense_config(built))
        return {g.name: (g.block, g.block_index) for g in get_adapter(skeleton).structure_groups()}
    except Exception:  # noqa: BLE001 - block indices are a convenience: fall back to the names
        return {}


def bottleneck_report(source: Any, *, margin: float = DEFAULT_MARGIN) -> BottleneckReport:
    """The per-group kept widths of the last structured pruning step, and its bottleneck candidates.

    Args:
        source: a structurally pruned model (in memory, or reloaded with
            :class:`~hf_sparsify.AutoSparseModelForImageClassification`), a folder its ``save_pretrained`` wrote, or a
            :class:`~hf_sparsify.PruningResult` (or its ``to_dict()``).
        margin: the default margin of :meth:`BottleneckReport.candidates` (0.1: 10 points above the median).

    Raises:
        BottleneckReportError: the source records no structured pruning (unpruned, or pruned by an unstructured method).
        UnsupportedModelError: a model without an adapter.
    """
    if not 0 <= margin < 1:
        raise BottleneckReportError(f"margin must be in [0, 1) (points of kept fraction above the median), got {margin!r}.")
    record = _record_of(source)
    if record is not None:
        if isinstance(record.get("pruning"), Mapping):
            record = record["pruning"]  # a sparsity_summary.json
        return _from_record(record, source="pruning result", margin=margin)
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        if not (directory / SUMMARY_NAME).is_file():
            raise BottleneckReportError(
                f"{directory} has no {SUMMARY_NAME}: give a folder that save_pretrained of a structurally pruned model wrote, "
                "or the model itself."
            )
        summary = _read_json(directory / SUMMARY_NAME)
        config = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
        meta = config.get(METADATA_KEY) or {}
        if not isinstance(summary.get("pruning"), Mapping):
            raise BottleneckReportError(f"{directory}'s {SUMMARY_NAME} records no pruning run: it was not pruned by hf_sparsify.")
        return _from_record(summary["pruning"], blocks=_blocks_from_config(config), original=meta.get("dense_widths"), source="saved summary", margin=margin)
    if not isinstance(source, nn.Module):
        raise TypeError(f"bottleneck_report takes a pruned model, a folder or a PruningResult, got {type(source).__name__}.")
    groups = _groups_of(source)
    blocks = {g.name: (g.block, g.block_index) for g in groups}
    meta = getattr(source.config, METADATA_KEY, None) or {}
    original = meta.get("dense_widths")
    result = _record_of(getattr(source, "pruning_result", None))
    if result is not None and _structured_layers(result):
        return _from_record(result, blocks=blocks, original=original, source="pruning result", margin=margin)
    saved = _saved_record(source, groups)
    if saved is not None:
        return _from_record(saved, blocks=blocks, original=original, source="saved summary", margin=margin)
    report = _from_metadata(source, groups, meta, margin=margin)
    if report is not None:
        return report
    if result is not None:
        _from_record(result, source="pruning result", margin=margin)  # raises: an unstructured method's result
    raise BottleneckReportError(
        f"this {type(source).__name__} was not structurally pruned: no pruning result, and every structure has its recorded "
        "width. Prune it with a structured method first (e.g. hf_sparsify.prune(model, hf_sparsify.VBPConfig(target_macs_reduction=0.35), calibration))."
    )


def card_bottlenecks(summary: Mapping[str, Any]) -> BottleneckReport | None:
    """The report a model card shows: from the saved record's pruning run, when a structured method allocated its
    budget globally (``"global"`` / ``"dp"``); ``None`` otherwise."""
    record = summary.get("pruning")
    if not isinstance(record, Mapping) or (record.get("info") or {}).get("allocation") not in GLOBAL_ALLOCATIONS:
        return None
    if not _structured_layers(record):
        return None
    return _from_record(record, source="pruning result", margin=DEFAULT_MARGIN)
