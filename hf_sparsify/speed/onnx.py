"""ONNX export of pruned models, structured ones with per-layer widths and head counts included.

**Exporter**: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, torch's default since
2.9). optimum's exporters (the ``optimum-onnx`` package) would be preferred, as they take a model object, but the
only release (0.1.0) requires ``transformers<4.58`` and ``optimum~=2.1`` and fails to import with transformers 5
(``get_parameter_dtype`` was removed from ``transformers.modeling_utils``); the legacy TorchScript exporter is
deprecated. torch.export traces the model as it is, so every layer keeps its own shapes.

**Heads**: transformers 5's ViT, DeiT and DINOv2 attentions reshape their projections with
``view(*input_shape, -1, head_dim)`` and read the head count off the projection width, so a layer whose heads were
pruned exports with its own head count (the graph's ``Reshape`` takes ``-1``); the ``num_attention_heads``
attribute is not read by the forward. Before export every attention is checked (``q``, ``k``, ``v`` widths equal,
a whole number of heads, ``o_proj`` reading them) and its ``num_attention_heads`` attribute is brought in line with
its projections, so code that reads the attribute agrees with the graph.

**Equality**: the exported graph is run in ONNX Runtime (CPU) on a random batch of another size than the export's
example (the batch dimension is dynamic), and every output is compared with PyTorch's:
``|onnx − torch| ≤ atol + rtol·|torch|`` with ``atol = 1e-4, rtol = 1e-3`` in float32 (``1e-2, 1e-2`` in float16 /
bfloat16, which ONNX Runtime's CPU provider may not run: then the check is skipped and said so).

**Unstructured sparsity** exports as it is, zeros included: ONNX Runtime computes with dense kernels, so such a
model runs exactly as fast as the dense one (:attr:`OnnxExport.notes` says so). Only structured pruning (smaller
shapes) makes an ONNX model faster.

```python
>>> from hf_sparsify.speed.onnx import export_onnx
>>> exported = export_onnx(model, tmp_dir / "model.onnx")
>>> exported.output_names, exported.verified
(['logits'], True)
```
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters import ATTENTION_HEAD, UnsupportedModelError, get_adapter, supported_model_types
from ..errors import HfSparsifyError
from .inputs import SpeedInputError, dtype_name, example_inputs, load_model, resolve_dtype

__all__ = ["ONNX_FILE", "OnnxExport", "OnnxExportError", "OnnxRuntimeMissingError", "export_onnx", "onnx_output_names", "sync_head_counts", "verify_onnx"]

#: the file name of an export into a folder
ONNX_FILE = "model.onnx"
#: tolerances of the ONNX Runtime check: dtype -> (atol, rtol)
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.float16: (1e-2, 1e-2), torch.bfloat16: (1e-2, 1e-2)}
_EXTERNAL_DATA_BYTES = 1_500_000_000


class OnnxExportError(HfSparsifyError, RuntimeError):
    """The model cannot be exported to ONNX, or the exported graph's outputs differ from PyTorch's."""


class OnnxRuntimeMissingError(HfSparsifyError, ImportError):
    """onnx / onnxruntime / onnxscript are not installed: ``pip install "hf_sparsify[onnx]"``."""


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise OnnxRuntimeMissingError(
            f"ONNX export and the onnxruntime runtime need {', '.join(missing)}: install them with "
            '`pip install "hf_sparsify[onnx]"` (onnx, onnxscript, onnxruntime).'
        )


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and checked.

    Attributes:
        path: the ``.onnx`` file (weights inside it, or in ``<path>.data`` beside it for models over 1.5 GB).
        input_names, output_names: the graph's inputs (``pixel_values``) and outputs (``logits``, or
            ``last_hidden_state`` and ``pooler_output`` for a backbone...).
        dtype: the exported precision; image_size: the input size (the batch dimension is dynamic).
        verified: whether ONNX Runtime ran the graph and matched PyTorch within the tolerance;
            max_abs_diff: the largest difference seen; tolerance: ``(atol, rtol)``.
        notes: facts the user should know (unstructured sparsity gives no speed-up with dense kernels, a check
            that could not run...).
    """

    path: Path
    input_names: list[str]
    output_names: list[str]
    dtype: str
    image_size: int
    verified: bool = False
    max_abs_diff: float | None = None
    tolerance: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "inputs": self.input_names,
            "outputs": self.output_names,
            "dtype": self.dtype,
            "image_size": self.image_size,
            "verified": self.verified,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": list(self.tolerance) if self.tolerance else None,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------- checks
def sync_head_counts(model: nn.Module) -> list[str]:
    """Check every attention of the model's adapter and set its ``num_attention_heads`` to the head count its
    projections hold (pruned layers differ from the config). Returns the attentions whose attribute was changed.

    Raises:
        OnnxExportError: the projections disagree (``q``, ``k``, ``v`` of different widths, not a whole number of
            heads, or ``o_proj`` reading another width).
    """
    adapter = get_adapter(model)
    changed = []
    for group in adapter.structure_groups([ATTENTION_HEAD]):
        attention = model.get_submodule(group.name)
        widths = [model.get_submodule(name).out_features for name in group.producers]
        reads = [model.get_submodule(name).in_features for name in group.consumers]
        head_dim = group.unit_size
        if len(set(widths + reads)) != 1 or widths[0] % head_dim:
            raise OnnxExportError(
                f"{group.name}: the projections disagree (q/k/v widths {widths}, o_proj reads {reads}, head_dim {head_dim}); "
                "the model was not shrunk consistently. Prune heads with hf_sparsify's structured methods."
            )
        heads = widths[0] // head_dim
        if getattr(attention, group.count_attribute or "num_attention_heads", heads) != heads:
            setattr(attention, group.count_attribute or "num_attention_heads", heads)
            changed.append(group.name)
    return changed


def _prunable_sparsity(model: nn.Module) -> float:
    adapter = get_adapter(model)
    total = zeros = 0
    for layer in adapter.prunable_layers():
        weight = layer.weight
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def _sparsity_notes(model: nn.Module) -> list[str]:
    notes = []
    sparsity = _prunable_sparsity(model)
    if sparsity >= 0.01:
        pattern = None
        config = getattr(model, "pruning_config", None)
        if config is not None and hasattr(config, "nm_pattern"):
            pattern = config.nm_pattern()
        kind = f"{pattern[0]}:{pattern[1]} semi-structured" if pattern else "unstructured"
        notes.append(
            f"{sparsity:.1%} of the prunable weights are zeros ({kind} sparsity). ONNX Runtime computes them with dense "
            "kernels: this exported model is no faster than the dense one (only structured pruning, which makes the "
            "layers smaller, speeds up ONNX Runtime)."
        )
    return notes


# --------------------------------------------------------------------------------------------- export
class _OnnxWrapper(nn.Module):
    """The model with a plain signature (``pixel_values`` in, a tuple of the output's tensors out)."""

    def __init__(self, model: nn.Module, output_names: list[str], extra: dict[str, Any]):
        super().__init__()
        self.model = model
        self.output_names = output_names
        self.extra = extra

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values=pixel_values, **self.extra)
        return tuple(outputs[name] for name in self.output_names)


def onnx_output_names(model: nn.Module, inputs: dict[str, Any]) -> list[str]:
    """The names of the tensors the model returns for ``inputs`` (``logits``; ``last_hidden_state``,
    ``pooler_output``...), in order: the exported graph's outputs."""
    with torch.inference_mode():
        outputs = model(**inputs)
    if isinstance(outputs, torch.Tensor):
        raise OnnxExportError(f"{type(model).__name__} returns a bare tensor; hf_sparsify exports transformers models, whose outputs are named.")
    names = [name for name, value in outputs.items() if isinstance(value, torch.Tensor)]
    if not names:
        raise OnnxExportError(f"{type(model).__name__} returned no tensor to export.")
    return names


def _target_path(path: str | os.PathLike, overwrite: bool) -> tuple[Path, Path | None]:
    """(the .onnx file, the folder to hold it and the model's files, or None)."""
    path = Path(path)
    if path.suffix == ".onnx":
        file, folder = path, None
    else:
        file, folder = path / ONNX_FILE, path
        if folder.exists() and not folder.is_dir():
            raise SpeedInputError(f"{folder} exists and is not a folder: give a new folder or a path ending in .onnx.")
    if file.exists() and not overwrite:
        raise SpeedInputError(f"{file} exists: pass overwrite=True (--overwrite) to replace it, or give another path.")
    return file, folder


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's progress lines and warnings (torch.export's FutureWarnings, torchvision-less registry) hidden."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    model_or_folder: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    dtype: str | torch.dtype | None = None,
    opset_version: int | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> OnnxExport:
    """Export a pruned (or dense) model of a supported family to ONNX and check it in ONNX Runtime.

    Args:
        model_or_folder: a model, or a folder / Hub id hf_sparsify's loader reads (structured checkpoints too).
        path: a ``.onnx`` file, or a folder that receives ``model.onnx`` with the model's ``config.json`` (and the
            source folder's ``preprocessor_config.json``).
        image_size: the square input size (default: the config's ``image_size``); the batch is dynamic.
        dtype: export in this precision (``fp32``, ``fp16``, ``bf16``; default: the model's).
        opset_version: the ONNX opset (default: torch's).
        verify: run the graph in ONNX Runtime and compare with PyTorch (see the module docstring).
        overwrite: replace an existing file.

    Returns:
        :class:`OnnxExport`.

    Raises:
        UnsupportedModelError: the architecture has no hf_sparsify adapter.
        OnnxExportError: the export failed, or ONNX Runtime's outputs differ beyond the tolerance.
        OnnxRuntimeMissingError: onnx / onnxscript / onnxruntime are not installed.
    """
    _require_onnx()
    source = model_or_folder
    model = load_model(source)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        get_adapter(model)
    except UnsupportedModelError:
        raise UnsupportedModelError(
            f"ONNX export supports the model families hf_sparsify has adapters for ({', '.join(supported_model_types())}); "
            f"{type(model).__name__} (model_type {model_type!r}) has none. Export it with torch.onnx.export directly."
        ) from None
    file, folder = _target_path(path, overwrite)
    param = next(model.parameters())
    dtype = resolve_dtype(dtype, default=param.dtype)
    if isinstance(source, nn.Module):
        model = copy.deepcopy(model)  # the user's model is not cast, moved or changed
    model = model.to(device="cpu", dtype=dtype).eval()
    sync_head_counts(model)

    inputs = example_inputs(model, batch_size=2, image_size=image_size, dtype=dtype)
    pixel_values = inputs.pop("pixel_values")
    output_names = onnx_output_names(model, {"pixel_values": pixel_values, **inputs})
    wrapper = _OnnxWrapper(model, output_names, inputs).eval()
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (pixel_values,),
                dynamo=True,
                input_names=["pixel_values"],
                output_names=output_names,
                dynamic_shapes={"pixel_values": {0: "batch"}},
                opset_version=opset_version,
                verbose=False,
            )
            program.save(str(tmp), external_data=params_bytes > _EXTERNAL_DATA_BYTES)
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; say what failed
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)
        raise OnnxExportError(f"torch.onnx.export failed for {type(model).__name__}: {' '.join(str(err).split())[:500]}") from err
    os.replace(tmp, file)
    if tmp.with_name(tmp.name + ".data").exists():
        os.replace(tmp.with_name(tmp.name + ".data"), file.with_name(file.name + ".data"))

    image = int(pixel_values.shape[-1])
    result = OnnxExport(path=file, input_names=["pixel_values"], output_names=output_names, dtype=dtype_name(dtype), image_size=image)
    result.notes.extend(_sparsity_notes(model))
    if folder is not None:
        model.config.to_json_file(folder / "config.json")
        if isinstance(source, (str, os.PathLike)) and (Path(source) / "preprocessor_config.json").is_file():
            shutil.copyfile(Path(source) / "preprocessor_config.json", folder / "preprocessor_config.json")
    if verify:
        verify_onnx(result, model, inputs)
    return result


def _ort_session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])


def verify_onnx(exported: OnnxExport, model: nn.Module, extra: dict[str, Any] | None = None, *, batch_size: int = 3, seed: int = 1) -> OnnxExport:
    """Run the exported graph in ONNX Runtime (CPU) on a random batch of ``batch_size`` images and compare every
    output with the PyTorch model's (the model on the CPU, in the exported dtype). Updates and returns ``exported``.

    Raises:
        OnnxExportError: an output differs beyond the tolerance of the dtype (:data:`TOLERANCES`).
    """
    dtype = resolve_dtype(exported.dtype)
    atol, rtol = TOLERANCES[dtype]
    exported.tolerance = (atol, rtol)
    inputs = example_inputs(model, batch_size=batch_size, image_size=exported.image_size, dtype=dtype, device="cpu", seed=seed)
    pixel_values = inputs.pop("pixel_values")
    with torch.inference_mode():
        reference = model(pixel_values=pixel_values, **(extra or inputs))
    try:
        session = _ort_session(exported.path, threads=torch.get_num_threads())
        feed = pixel_values.float().numpy() if dtype == torch.bfloat16 else pixel_values.numpy()
        outputs = session.run(exported.output_names, {"pixel_values": feed})
    except Exception as err:  # noqa: BLE001 - ORT raises its own types for a missing CPU kernel
        if dtype != torch.float32:
            exported.notes.append(f"not checked in ONNX Runtime: its CPU provider cannot run this {dtype_name(dtype)} graph ({' '.join(str(err).split())[:200]}).")
            return exported
        raise OnnxExportError(f"ONNX Runtime cannot run the exported graph {exported.path}: {' '.join(str(err).split())[:500]}") from err
    worst = 0.0
    for name, value in zip(exported.output_names, outputs):
        expected = reference[name].float()
        got = torch.from_numpy(value).float()
        if got.shape != expected.shape:
            raise OnnxExportError(f"ONNX output {name!r} has shape {tuple(got.shape)}, PyTorch's {tuple(expected.shape)}.")
        diff = (got - expected).abs()
        worst = max(worst, float(diff.max())) if diff.numel() else worst
        bad = diff > atol + rtol * expected.abs()
        if bool(bad.any()):
            raise OnnxExportError(
                f"ONNX Runtime's {name!r} differs from PyTorch's by up to {float(diff.max()):.3g} (tolerance {atol:g} + {rtol:g}·|value|) "
                f"at {int(bad.sum())} of {bad.numel()} entries: the export is wrong."
            )
    exported.verified = True
    exported.max_abs_diff = worst
    return exported


def read_onnx_io(path: str | os.PathLike) -> dict[str, Any]:
    """The input and output names and shapes of an ONNX file (for reports)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return json.loads(json.dumps({"inputs": {v.name: shape(v) for v in graph.input}, "outputs": {v.name: shape(v) for v in graph.output}}))
