"""What every speed measurement and export shares: the model (in memory, or loaded from a folder or Hub id), its
example inputs, the device and dtype names, and a description of the machine and library versions.

```python
>>> from hf_sparsify.speed.inputs import example_inputs, resolve_dtype
>>> inputs = example_inputs(model, batch_size=2)
>>> tuple(inputs["pixel_values"].shape), resolve_dtype("fp16")
((2, 3, 32, 32), torch.float16)
```
"""

from __future__ import annotations

import functools
import inspect
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HfSparsifyError

__all__ = [
    "DTYPE_NAMES",
    "SpeedInputError",
    "describe_device",
    "dtype_name",
    "example_inputs",
    "library_versions",
    "load_model",
    "model_image_size",
    "resolve_device",
    "resolve_dtype",
]

#: the dtype names the speed tools take (``--dtype``), with their torch dtypes
DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class SpeedInputError(HfSparsifyError, ValueError):
    """A model, device, dtype or input size the speed tools cannot use: the message says which and what to give."""


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """``"fp32"``/``"float32"``, ``"fp16"``, ``"bf16"`` (or a torch dtype) as a torch dtype; ``None``: ``default``."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        if dtype not in _SHORT:
            raise SpeedInputError(f"dtype {dtype} is not supported for speed measurements; use fp32, fp16 or bf16.")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPE_NAMES:
        raise SpeedInputError(f"dtype {dtype!r} is not one of fp32, fp16, bf16 (or float32, float16, bfloat16).")
    return DTYPE_NAMES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``fp32``, ``fp16``, ``bf16``) of a dtype."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (default: the CPU); a CUDA device this machine lacks is refused."""
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise SpeedInputError(f"device {device!r} is not a device ({err}); use cpu or cuda (cuda:1...).") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpeedInputError(
                f"device {device}: no CUDA GPU is available here (torch {torch.__version__}, torch.cuda.is_available() is False); "
                "use --device cpu, or a CUDA build of torch on a machine with a GPU."
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= torch.cuda.device_count():
            raise SpeedInputError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif device.type != "cpu":
        raise SpeedInputError(f"device {device}: the speed tools measure on cpu or cuda.")
    return device


@functools.lru_cache(maxsize=None)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: the CPU model and torch threads, or the GPU's name and capability."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}", "index": device.index}
    return {"type": "cpu", "name": _cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def library_versions(*, onnxruntime: bool = False) -> dict[str, str]:
    """The versions a timing depends on: python, torch (and CUDA), transformers, hf_sparsify, and onnxruntime
    when it is used."""
    import transformers

    from .. import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__, "hf_sparsify": __version__}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    if onnxruntime:
        try:
            import onnxruntime as ort

            versions["onnxruntime"] = ort.__version__
        except ImportError:
            versions["onnxruntime"] = "not installed"
    return versions


def model_image_size(model: nn.Module) -> int:
    """The square input size the model's config names (``image_size``; 224 when absent)."""
    size = getattr(getattr(model, "config", None), "image_size", None) or 224
    if isinstance(size, (list, tuple)):
        size = size[0]
    elif isinstance(size, dict):
        size = size.get("height", 224)
    return int(size)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def example_inputs(
    model: nn.Module,
    batch_size: int = 1,
    image_size: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Random ``pixel_values`` (seeded) of ``batch_size`` square images of ``image_size`` (default: the config's),
    plus ``interpolate_pos_encoding=True`` when the size differs from the config's and the model takes that flag
    (ViT, DeiT). The tensor is made on the CPU and moved, so the values do not depend on the device."""
    if batch_size < 1:
        raise SpeedInputError(f"batch_size must be ≥ 1, got {batch_size}.")
    if not _accepts(model, "pixel_values"):
        raise SpeedInputError(f"{type(model).__name__} does not take pixel_values: the speed tools measure vision models that take images.")
    size = image_size or model_image_size(model)
    if size < 1:
        raise SpeedInputError(f"image_size must be ≥ 1, got {size}.")
    param = next(model.parameters(), None)
    dtype = dtype or (param.dtype if param is not None else torch.float32)
    device = device if device is not None else (param.device if param is not None else "cpu")
    channels = getattr(model.config, "num_channels", 3)
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, channels, size, size, generator=generator).to(device=device, dtype=dtype)
    inputs: dict[str, Any] = {"pixel_values": pixel_values}
    if size != model_image_size(model) and _accepts(model, "interpolate_pos_encoding"):
        inputs["interpolate_pos_encoding"] = True
    return inputs


def load_model(source: str | os.PathLike | nn.Module, *, what: str = "model") -> nn.Module:
    """``source`` as an evaluation-mode model: a model as is, or a folder / Hub id loaded with hf_sparsify's loader
    (any checkpoint: dense, unstructured, structured, compressed; a classifier or a bare backbone)."""
    if isinstance(source, nn.Module):
        return source
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    from ..modeling import AutoSparseModel, AutoSparseModelForImageClassification

    name = str(source)
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise SpeedInputError(f"{what} {name!r} not found: give a local folder or a Hub model id.")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise SpeedInputError(f"could not load {what} {name!r}: {err}") from None
    archs = getattr(config, "architectures", None) or []
    classifier = type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING and (not archs or any("ForImageClassification" in a for a in archs))
    loader = AutoSparseModelForImageClassification if classifier else AutoSparseModel
    try:
        return loader.from_pretrained(name, config=config).eval()
    except (OSError, ValueError, KeyError) as err:
        raise SpeedInputError(f"could not load {what} {name!r}: {err}") from None
