"""What a model card says: the facts of a pruned model gathered into the fields a card template is rendered with.

:func:`card_context` turns :class:`CardInputs` (read from a saved folder with :func:`inputs_from_folder`, or from a
model in memory with :func:`inputs_from_model`) into the template's fields; :mod:`hf_sparsify.hub.card` renders and
writes the card. A model pruned more than once (e.g. CAP, then VBP) records each step in its config's
``hf_sparsify.history``; the card names every method in order, describes each step and cites every paper.

```python
>>> from hf_sparsify.hub.context import card_context, inputs_from_model
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
>>> context = card_context(inputs_from_model(pruned), repo_id="me/vit-50")
>>> context["method_title"], [step["description"] for step in context["history"]]
('magnitude pruning', ['magnitude pruning to sparsity 0.5'])
```
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCardData
from transformers.utils import CONFIG_NAME as MODEL_CONFIG_NAME
from transformers.utils import IMAGE_PROCESSOR_NAME

from ..configuration import CONFIG_NAME, PruningConfig, PruningConfigError, citation_of, get_method
from ..io.summary import (
    METRIC_STAGES,
    _read_json,
    card_section,
    is_fraction_metric,
    is_hub_id,
    normalize_metadata,
    normalize_metrics,
    normalize_speedups,
    read_summary,
    summary_dict,
)
from ..structured.bottleneck import card_bottlenecks
from ..surgery.shapes import _SHAPE_KEYS, METADATA_KEY

__all__ = ["CardInputs", "card_context", "inputs_from_folder", "inputs_from_model", "pruning_steps"]


@dataclass
class CardInputs:
    """Everything a card is made from, read from a saved folder or from a model in memory.

    Attributes:
        config: the model's ``config.json`` as a dict (with hf_sparsify's metadata under ``"hf_sparsify"``).
        summary: the saved record (``sparsity_summary.json`` without its ``"card"`` part, or the same from a model).
        pruning: the last pruning configuration (``pruning_config.json``) as a dict, if any.
        card: card data: ``metrics``, ``speedups``, ``training``, ``metadata``, ``license``.
        files: the names of the files beside the card (``None`` for a model in memory).
        name: the folder's or model's name (the default repo id of the snippet).
    """

    config: dict[str, Any]
    summary: dict[str, Any]
    pruning: dict[str, Any] | None = None
    card: dict[str, Any] = field(default_factory=dict)
    files: set[str] | None = None
    name: str = "pruned-model"

    @property
    def meta(self) -> dict[str, Any]:
        return self.config.get(METADATA_KEY) or {}


def inputs_from_folder(directory: str | os.PathLike, also_present=()) -> CardInputs:
    """Read a folder written by ``save_pretrained`` of a pruned model. ``also_present``: names of files that will sit
    beside the card although the folder does not hold them yet (a save stages its files before it swaps them in)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a folder.")
    if not (directory / MODEL_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no {MODEL_CONFIG_NAME}: give the folder a pruned model was saved to.")
    summary = read_summary(directory)
    pruning = _read_json(directory / CONFIG_NAME) if (directory / CONFIG_NAME).is_file() else None
    files = {p.name for p in directory.iterdir() if p.is_file()} | set(also_present)
    return CardInputs(config=_read_json(directory / MODEL_CONFIG_NAME), summary=summary, pruning=pruning, card=dict(summary.get("card") or {}), files=files, name=directory.resolve().name)


def inputs_from_model(model, name: str | None = None) -> CardInputs:
    """Gather the same information from a pruned model in memory."""
    pruning_config = getattr(model, "pruning_config", None)
    return CardInputs(
        config=model.config.to_dict(),
        summary=summary_dict(model),
        pruning=pruning_config.to_dict() if pruning_config is not None else None,
        card=card_section(model),
        files=None,
        name=name or Path(str(getattr(model, "name_or_path", "") or "pruned-model")).name or "pruned-model",
    )


# --------------------------------------------------------------------------------------------- pruning steps
def _config_of(data: Mapping[str, Any] | None) -> PruningConfig | None:
    """The configuration a saved dict describes, or ``None`` (no dict, or a method this install does not know)."""
    if not data:
        return None
    try:
        return PruningConfig.from_dict(dict(data))
    except (PruningConfigError, TypeError, ValueError):
        return None


def _title(method: str | None) -> str:
    citation = citation_of(method) if method else None
    return citation.title if citation else (method or "an unknown method")


def _target_text(config: PruningConfig | None) -> str | None:
    if config is None or config.target is None:
        return None
    value = config.target
    return f"{config.target_field.replace('_', ' ')} {value:g}" if isinstance(value, float) else f"{config.target_field.replace('_', ' ')} {value}"


def pruning_steps(inputs: CardInputs) -> list[dict[str, Any]]:
    """The pruning steps of the model, oldest first: ``{"method", "config", "num_calibration_samples"}`` each.

    From the config's ``hf_sparsify.history`` (written by :func:`hf_sparsify.prune`); a checkpoint without one has a
    single step, its last pruning configuration and the calibration count its summary recorded."""
    history = inputs.meta.get("history")
    if isinstance(history, list) and history:
        return [dict(step) for step in history if isinstance(step, Mapping) and step.get("method")]
    pruning = inputs.pruning or {}
    record = inputs.summary.get("pruning") or {}
    method = pruning.get("method") or inputs.meta.get("method") or record.get("method")
    if not method:
        return []
    step: dict[str, Any] = {"method": method, "config": pruning or None}
    used = (record.get("info") or {}).get("num_calibration_samples")
    if used is not None:
        step["num_calibration_samples"] = used
    return [step]


def _calibration(step: Mapping[str, Any]) -> str | None:
    """How many calibration images a step read: the number it recorded (``result.info``), else what its
    configuration asked for, said as such; ``None`` when the method reads no calibration data."""
    used = step.get("num_calibration_samples")
    if used:
        return f"{int(used):,} calibration images"
    config = _config_of(step.get("config"))
    try:
        reads_data = config is not None and get_method(config.method).pruner_class.needs_calibration_data
        asked = config.calibration_images() if reads_data else None
    except Exception:  # noqa: BLE001 - a method this install cannot import: say nothing rather than guess
        return None
    if not reads_data:
        return None
    return "an unrecorded number of calibration images" + (f" (up to {int(asked):,} asked for)" if asked else "")


def _describe(step: Mapping[str, Any]) -> str:
    text = _title(step.get("method"))
    target = _target_text(_config_of(step.get("config")))
    if target:
        text += f" to {target}"
    images = _calibration(step)
    if images:
        text += f", from {images}"
    return text


def _methods_in_order(steps: list[dict[str, Any]]) -> list[str]:
    """The methods of the steps, in order, each consecutive run of one method named once."""
    methods: list[str] = []
    for step in steps:
        if not methods or methods[-1] != step["method"]:
            methods.append(step["method"])
    return methods


def _citations(steps: list[dict[str, Any]]) -> str | None:
    entries = []
    for method in dict.fromkeys(step["method"] for step in steps):
        citation = citation_of(method)
        if citation and citation.bibtex not in entries:
            entries.append(citation.bibtex)
    return "\n\n".join(entries) or None


def _calibration_note(steps: list[dict[str, Any]]) -> str | None:
    """One limitation sentence on the calibration data the pruning decisions read (the numbers actually used)."""
    counts = [(index, step, _calibration(step)) for index, step in enumerate(steps, 1)]
    counts = [(index, step, images) for index, step, images in counts if images]
    if not counts:
        return None
    if len(steps) == 1:
        used = counts[0][2]
    else:
        used = "; ".join(f"{images} in step {index} ({_title(step['method'])})" for index, step, images in counts)
    return f"The pruning decisions used {used}; results on data unlike them may differ."


# --------------------------------------------------------------------------------------------- formatting
def _fmt_int(value: int | None) -> str:
    return f"{value:,}" if value is not None else "n/a"


def _fmt_macs(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e9:,.2f} G" if value >= 1e9 else f"{value / 1e6:,.2f} M"


def _ratio(pruned: int | None, dense: int | None) -> str:
    if not pruned or not dense:
        return ""
    return f" ({pruned / dense:.1%})"


def _loader(inputs: CardInputs) -> tuple[str, str, bool]:
    """(library_name, auto class, needs hf_sparsify) for this checkpoint."""
    meta = inputs.meta
    structured = any(meta.get(k) for k in _SHAPE_KEYS)
    compressed = bool(meta.get("compression"))
    archs = inputs.config.get("architectures") or []
    classifier = any("ForImageClassification" in a for a in archs) or not archs
    needs_ours = structured or compressed
    if needs_ours:
        auto = "AutoSparseModelForImageClassification" if classifier else "AutoSparseModel"
    else:
        auto = "AutoModelForImageClassification" if classifier else "AutoModel"
    return ("hf_sparsify" if needs_ours else "transformers"), auto, needs_ours


def _load_snippet(repo: str, auto: str, needs_ours: bool, processor_source: str | None) -> str:
    lines = []
    if needs_ours:
        lines.append("import hf_sparsify  # pip install hf_sparsify")
    imports = ["AutoImageProcessor"] if processor_source else []
    if not needs_ours:
        imports.append(auto)
    if imports:
        lines.append(f"from transformers import {', '.join(imports)}")
    lines.append("")
    loader = f"hf_sparsify.{auto}" if needs_ours else auto
    lines.append(f'model = {loader}.from_pretrained("{repo}")')
    if processor_source:
        lines.append(f'processor = AutoImageProcessor.from_pretrained("{processor_source}")')
        lines.append("")
        lines.append('inputs = processor(images=image, return_tensors="pt")  # image: a PIL image')
        lines.append("logits = model(**inputs).logits" if "Classification" in auto else "features = model(**inputs).last_hidden_state")
    return "\n".join(lines)


def _metrics_results(metrics: dict[str, Any] | None, model_name: str) -> list[EvalResult]:
    if not metrics:
        return []
    dataset_name = metrics.get("dataset") or metrics.get("dataset_id") or "evaluation data"
    dataset_type = metrics.get("dataset_id") or re.sub(r"[^a-z0-9]+", "-", dataset_name.lower()).strip("-") or "custom"
    results = []
    for stage, label in METRIC_STAGES.items():
        for metric, value in (metrics.get(stage) or {}).items():
            if metric in ("num_samples", "runtime", "samples_per_second", "steps_per_second"):
                continue
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=metrics.get("split"),
                    dataset_config=metrics.get("config"),
                    metric_type=metric,
                    metric_value=round(float(value), 6),
                    metric_name=f"{metric} ({label})",
                )
            )
    return results


def _evaluation_table(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    names: list[str] = []
    for stage in METRIC_STAGES:
        for key in metrics.get(stage) or {}:
            if key not in names:
                names.append(key)
    rows = []
    for stage, label in METRIC_STAGES.items():
        values = metrics.get(stage)
        if not values:
            continue
        row = [label]
        for key in names:
            value = values.get(key)
            if value is None:
                row.append("")
            elif is_fraction_metric(key):
                row.append(f"{value:.2%}")
            elif isinstance(value, int):
                row.append(f"{value:,}")
            else:
                row.append(f"{value:.4g}")
        rows.append(row)
    dataset = metrics.get("dataset") or metrics.get("dataset_id") or "evaluation data"
    if metrics.get("split"):
        dataset += f" ({metrics['split']})"
    return {"columns": [f"stage — {dataset}", *names], "rows": rows}


def _summary_paragraph(inputs: CardInputs, method_title: str, base: str | None, needs_ours: bool, steps: int = 1) -> str:
    summary, meta = inputs.summary, inputs.meta
    glob = summary.get("global") or {}
    macs = summary.get("macs") or {}
    structured = any(s.get("dense_units") not in (None, s.get("units")) for s in summary.get("structures") or [])
    base_text = f"`{base}`" if base else "a vision model"
    in_steps = f" in {steps} steps" if steps > 1 else ""
    widened_only = not steps and bool(meta.get("expansions"))
    if widened_only:
        parts = [f"This model is {base_text} widened by `hf_sparsify.expand` (new units with zero outgoing weights: the same function); it was not pruned."]
    else:
        parts = [f"This model is {base_text} pruned{in_steps} with {method_title} by hf_sparsify {meta.get('version', '')}".rstrip() + "."]
    if structured and widened_only:
        dense_params, params = glob.get("dense_params"), glob.get("total_params")
        parts.append(f"It has {_fmt_int(params)} parameters" + (f" instead of {_fmt_int(dense_params)}" if dense_params else "") + ".")
    elif structured:
        dense_params, params = glob.get("dense_params"), glob.get("total_params")
        parts.append(
            f"Structures (MLP neurons, attention heads or channels) were physically removed: it has {_fmt_int(params)} parameters"
            + (f" instead of {_fmt_int(dense_params)}{_ratio(params, dense_params)}" if dense_params else "")
            + (f" and needs {_fmt_macs(macs.get('pruned'))} MACs per image instead of {_fmt_macs(macs.get('dense'))}" if macs.get("pruned") and macs.get("dense") else "")
            + ". Its layers have smaller shapes, so it runs faster with ordinary dense kernels."
        )
    sparsity = glob.get("sparsity")
    if sparsity:
        parts.append(
            f"{sparsity:.1%} of the weights of its {len(summary.get('layers') or [])} prunable layers are zero"
            + ("" if structured else "; the tensors keep their dense shapes")
            + "."
        )
    if needs_ours:
        parts.append("Load it with hf_sparsify's loader (snippet below).")
    metrics = inputs.card.get("metrics") or {}
    stages = [(stage, text) for stage, text in (("before", "dense"), ("after", "after pruning"), ("recovered", "after recovery fine-tuning")) if "accuracy" in (metrics.get(stage) or {})]
    if stages:
        dataset = metrics.get("dataset") or metrics.get("dataset_id") or "the evaluation data"
        values = ", ".join(f"{metrics[stage]['accuracy']:.2%} {text}" for stage, text in stages)
        parts.append(f"Top-1 accuracy on {dataset}: {values}.")
    return " ".join(parts)


def _limitations(inputs: CardInputs, needs_ours: bool, nm: str | None, steps: list[dict[str, Any]]) -> list[str]:
    meta, metrics = inputs.meta, inputs.card.get("metrics") or {}
    structured = any(s.get("dense_units") not in (None, s.get("units")) for s in inputs.summary.get("structures") or [])
    items = []
    if not structured:
        if meta.get("compression"):
            items.append("The weights are stored in hf_sparsify's compressed sparse format (smaller download); they are decoded to dense tensors when loaded, so memory use and speed are those of the dense model.")
        else:
            items.append("Zeros are stored in dense tensors: file size, memory and speed with ordinary dense kernels are those of the dense model. The gains need sparse kernels or the compressed format (`save_pretrained(dir, compressed=True)`).")
    if nm:
        items.append(f"The {nm} pattern can be accelerated by semi-structured sparse kernels (e.g. NVIDIA sparse tensor cores through `torch.sparse.to_sparse_semi_structured`); hf_sparsify does not convert the layers for you.")
    if needs_ours:
        items.append("Plain `transformers` cannot load this checkpoint (it stops with an error rather than loading wrong weights); use hf_sparsify's loader.")
    if not metrics:
        items.append("No evaluation results were recorded: measure accuracy on your data before relying on it.")
    elif "recovered" not in metrics:
        items.append("No recovery fine-tuning was recorded: one-shot pruning usually costs some accuracy, which fine-tuning (e.g. `hf_sparsify.SparseTrainer`) recovers in part.")
    calibration = _calibration_note(steps)
    if calibration:
        items.append(calibration)
    items.append("The model inherits the biases and limitations of its base model and of the data it was trained on.")
    return items


def _size_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    glob, macs = summary.get("global") or {}, summary.get("macs") or {}
    total, zeros = glob.get("total_params"), glob.get("zero_params") or 0
    dense = glob.get("dense_params") or total
    rows = [
        ("parameters", _fmt_int(dense), _fmt_int(total) + _ratio(total, dense)),
        ("non-zero parameters", _fmt_int(dense), _fmt_int(total - zeros if total is not None else None) + _ratio(total - zeros if total else None, dense)),
        ("sparsity of the prunable layers", "0.0%", f"{glob.get('sparsity', 0.0):.1%}"),
    ]
    if macs.get("dense") or macs.get("pruned"):
        rows.append(("MACs per image", _fmt_macs(macs.get("dense")), _fmt_macs(macs.get("pruned")) + _ratio(macs.get("pruned"), macs.get("dense"))))
        rows.append(("MACs per image, non-zero weights only", _fmt_macs(macs.get("dense")), _fmt_macs(macs.get("effective")) + _ratio(macs.get("effective"), macs.get("dense"))))
    return rows


def _nm_pattern(pruning: dict[str, Any] | None) -> str | None:
    config = _config_of(pruning)
    pattern = config.nm_pattern() if config is not None else None
    return f"{pattern[0]}:{pattern[1]}" if pattern else None


def _training_rows(training: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not training:
        return None
    rows = []
    for key, value in training.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        rows.append((str(key).replace("_", " "), f"`{value}`" if isinstance(value, str) and value and "|" not in value else str(value)))
    return {"rows": rows}


def _bottlenecks(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The bottleneck section: the kept fraction per group of the last pruning step, when a structured method spread
    its budget by one ranking across groups (see :func:`hf_sparsify.bottleneck_report`)."""
    report = card_bottlenecks(summary)
    if report is None:
        return None
    candidates = {row.name for row in report.candidates()}
    rows = [
        {
            "name": row.name,
            "kind": row.kind,
            "kept": row.kept,
            "dense": row.dense,
            "fraction": f"{row.fraction:.1%}",
            "candidate": "yes" if row.name in candidates else "",
        }
        for row in report.rows
    ]
    return {
        "method": report.method or "the method",
        "allocation": report.allocation,
        "rule": report.rule(),
        "candidates": [row.name for row in report.candidates()],
        "rows": rows,
    }


def _spdy(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SPDY section: the speed-up target, the predicted and measured speed-ups and the per-group (widths) or
    per-layer (sparsity levels) profile, when the last pruning step was SPDY (``info["spdy"]`` of its record)."""
    record = summary.get("pruning")
    spdy = ((record or {}).get("info") or {}).get("spdy") if isinstance(record, Mapping) else None
    if not isinstance(spdy, Mapping) or not spdy.get("profile"):
        return None
    unit = spdy.get("unit", "")

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)

    measured = spdy.get("measured_speedup")
    return {
        "target": f"{spdy['target_speedup']:g}× speed-up" if spdy.get("target_speedup") else f"a cost of {fmt(spdy.get('target_cost'))} {unit}",
        "cost": f"latency measured per {'layer' if spdy.get('levels') else 'block'} on the pruning machine" if spdy.get("cost") == "latency" else "MACs per image",
        "unit": unit,
        "base_method": spdy.get("base_method", ""),
        "predicted": f"{spdy['predicted_speedup']:.3f}×",
        "measured": f"{measured:.3f}×" if isinstance(measured, (int, float)) else "not measured",
        "measured_by": spdy.get("measured_by") or "",
        "uncontrolled": f"{spdy.get('uncontrolled_fraction', 0.0):.1%}",
        "max_speedup": f"{spdy['max_speedup']:.3f}×" if isinstance(spdy.get("max_speedup"), (int, float)) else "",
        "levels": spdy.get("levels"),  # sparsity levels of an unstructured base, else None (structure widths)
        "rows": [
            {
                "name": r["name"],
                "kind": r["kind"],
                "width": r.get("width"),
                "dense": r.get("dense_width"),
                "sparsity": f"{r['sparsity']:.2%}" if isinstance(r.get("sparsity"), (int, float)) else "",
                "level": r["level"],
                "cost": fmt(r["cost"]),
                "dense_cost": fmt(r["dense_cost"]),
            }
            for r in spdy["profile"]
        ],
    }


def _expansions(meta: Mapping[str, Any], steps: int) -> list[str]:
    """One sentence per widening (``hf_sparsify.expand``) the config recorded, saying where it sits among the
    pruning steps."""
    out = []
    for expansion in meta.get("expansions") or []:
        if not isinstance(expansion, Mapping):
            continue
        widths = ", ".join(f"`{name}` {old} → {new}" for name, (old, new) in (expansion.get("widths") or {}).items())
        after = int(expansion.get("after_step", 0))
        when = "before any pruning" if after == 0 else f"after pruning step {after}"
        out.append(f"Widened ×{float(expansion.get('factor', 0)):g} by `hf_sparsify.expand` {when}{' (the last)' if steps and after == steps else ''}: {widths}.")
    return out


def card_context(inputs: CardInputs, *, repo_id: str | None = None, chart: str | None = None) -> dict[str, Any]:
    """The fields a card template is rendered with (listed at the top of the default template)."""
    from .. import __version__

    meta, pruning = inputs.meta, inputs.pruning or {}
    overrides = normalize_metadata(inputs.card.get("metadata"))
    metrics = normalize_metrics(inputs.card.get("metrics"))
    speedups = normalize_speedups(inputs.card.get("speedups"))
    steps = pruning_steps(inputs)
    methods = _methods_in_order(steps)
    method = methods[-1] if methods else None
    method_title = ", then ".join(_title(m) for m in methods) if methods else _title(None)
    if not methods and meta.get("expansions"):
        method_title = "none (widened by hf_sparsify.expand, not pruned)"
    base = overrides.get("base_model") or meta.get("base_model")
    base_display = base if base is None or is_hub_id(base) else Path(str(base)).name
    library, auto, needs_ours = _loader(inputs)
    repo = repo_id or inputs.name
    model_name = overrides.get("model_name") or repo.split("/")[-1]

    processor_source = None
    if inputs.files is None or IMAGE_PROCESSOR_NAME in inputs.files:
        processor_source = repo if inputs.files is not None else (base if is_hub_id(base) else None)
    elif is_hub_id(base):
        processor_source = base

    nm = _nm_pattern(pruning)
    tags = ["hf-sparsify", "pruned", "sparse"]
    for name in dict.fromkeys(methods):
        tags.append(str(name))
    structured = any(s.get("dense_units") not in (None, s.get("units")) for s in inputs.summary.get("structures") or [])
    tags.append("structured-pruning" if structured else "unstructured-sparsity")
    if nm:
        tags.append("semi-structured-sparsity")
    if inputs.config.get("model_type"):
        tags.append(str(inputs.config["model_type"]))
    for tag in overrides.get("tags") or []:
        if tag not in tags:
            tags.append(tag)

    license_ = overrides.get("license") or inputs.card.get("license")
    datasets = overrides.get("datasets")
    if datasets is None and metrics and metrics.get("dataset_id"):
        datasets = [metrics["dataset_id"]]
    archs = inputs.config.get("architectures") or []
    pipeline_tag = overrides.get("pipeline_tag") or ("image-classification" if any("ForImageClassification" in a for a in archs) else "image-feature-extraction")
    data_kwargs: dict[str, Any] = {
        "base_model": base if is_hub_id(base) else None,
        "library_name": overrides.get("library_name") or library,
        "license": license_,
        "license_name": overrides.get("license_name"),
        "license_link": overrides.get("license_link"),
        "tags": tags,
        "datasets": [datasets] if isinstance(datasets, str) else datasets,
        "language": overrides.get("language"),
        "pipeline_tag": pipeline_tag,
    }
    results = _metrics_results(metrics, model_name)
    if results:
        data_kwargs["model_name"] = model_name
        data_kwargs["eval_results"] = results
    card_data = ModelCardData(**{k: v for k, v in data_kwargs.items() if v is not None})

    if license_:
        license_note = f"`{license_}`" + (f", inherited from the base model `{base_display}`." if base and not overrides.get("license") else ".") + " Check the base model's terms as well."
    else:
        license_note = "Not known: the base model's licence could not be read. It applies to this derived model; check it before use or redistribution."

    layers = [
        {"name": l["name"], "role": l.get("role", ""), "shape": "×".join(str(s) for s in l.get("shape", [])), "params": _fmt_int(l.get("numel")), "sparsity": f"{l.get('sparsity', 0.0):.1%}"}
        for l in inputs.summary.get("layers") or []
    ]
    structures = [
        {"name": s["name"], "kind": s["kind"], "kept": s["units"], "dense": s["dense_units"], "fraction": f"{s['units'] / s['dense_units']:.1%}"}
        for s in inputs.summary.get("structures") or []
        if s.get("dense_units") not in (None, s.get("units"))
    ]
    speed_rows = [
        {
            "device": s["device"],
            "dtype": s["dtype"],
            "batch_size": s["batch_size"],
            "runtime": s.get("runtime", ""),
            "dense": f"{s['dense_ms']:.2f} ms" if "dense_ms" in s else "",
            "pruned": f"{s['pruned_ms']:.2f} ms" if "pruned_ms" in s else "",
            "speedup": f"{s['speedup']:.2f}×",
            "notes": s.get("notes", ""),
        }
        for s in speedups
    ]
    return {
        "card_data": card_data.to_yaml(),
        "_card_data": card_data,
        "model_name": model_name,
        "repo_id": repo,
        "method": method or "",
        "method_title": method_title,
        "base_model": base_display,
        "summary": _summary_paragraph(inputs, method_title, base_display, needs_ours, len(steps)),
        "history": [{"step": i, "method": step["method"], "description": _describe(step)} for i, step in enumerate(steps, 1)],
        "pruning_config_json": json.dumps(pruning, indent=2, sort_keys=True) if pruning else "{}",
        "size_rows": _size_rows(inputs.summary),
        "layers": layers,
        "structures": structures,
        "chart": chart,
        "evaluation": _evaluation_table(metrics),
        "speedups": speed_rows,
        "load_snippet": _load_snippet(repo, auto, needs_ours, processor_source),
        "limitations": _limitations(inputs, needs_ours, nm, steps),
        "citation": _citations(steps),
        "license_note": license_note,
        "training": _training_rows(inputs.card.get("training")),
        "bottlenecks": _bottlenecks(inputs.summary),
        "spdy": _spdy(inputs.summary),
        "expansions": _expansions(meta, len(steps)),
        "version": __version__,
    }


