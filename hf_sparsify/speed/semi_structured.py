"""2:4 semi-structured sparsity on NVIDIA GPUs: convert 2:4-pruned ``nn.Linear`` layers to PyTorch's compressed
format (``torch.sparse.to_sparse_semi_structured``), whose matrix products run on the sparse tensor cores of
Ampere (compute capability 8.0) and newer GPUs.

A model pruned with ``mask_structure="2:4"`` (magnitude, CAP, FastCAP) keeps at most 2 of every 4 consecutive
weights along each row's input dimension — exactly the layout those kernels take. :func:`semi_structured_layers`
finds such layers; :func:`to_semi_structured` converts them in place (float16 / bfloat16 weights whose shapes
meet the kernels' size constraints; the others stay dense and are listed); :func:`compare_with_dense` checks the
converted model against the masked dense model.

Without a supporting GPU, :func:`check_semi_structured_support` raises :class:`SemiStructuredUnavailableError`,
saying what is missing (a CUDA build of torch, a GPU, compute capability ≥ 8.0, a half-precision dtype).

```python
>>> from hf_sparsify.speed.semi_structured import is_2_4_sparse
>>> is_2_4_sparse(torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]]))
True
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import HfSparsifyError

__all__ = [
    "SemiStructuredConversion",
    "SemiStructuredUnavailableError",
    "check_semi_structured_support",
    "compare_with_dense",
    "is_2_4_sparse",
    "mask_2_4",
    "semi_structured_layers",
    "to_semi_structured",
]

#: the dtypes PyTorch's semi-structured kernels (cuSPARSELt and CUTLASS) take for floating-point weights
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
#: weight shapes must be multiples of these (rows, columns): the strictest of the two backends (CUTLASS, fp16/bf16)
MIN_SHAPE = (32, 64)


class SemiStructuredUnavailableError(HfSparsifyError, RuntimeError):
    """This machine (or this model) cannot run 2:4 semi-structured kernels; the message says what is missing."""


def check_semi_structured_support(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.device:
    """Check that ``device`` can run PyTorch's 2:4 kernels in ``dtype`` and return it.

    Raises:
        SemiStructuredUnavailableError: no CUDA build of torch, no GPU, a GPU older than Ampere (compute
            capability < 8.0), a device other than CUDA, or a dtype other than float16 / bfloat16.
    """
    needs = "2:4 semi-structured kernels need an NVIDIA GPU of compute capability ≥ 8.0 (Ampere, Ada, Hopper...) and a CUDA build of torch"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        raise SemiStructuredUnavailableError(f"{needs}; torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured.")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        cuda = "no CUDA GPU is available" if not torch.cuda.is_available() else f"the device asked for is {device}"
        raise SemiStructuredUnavailableError(
            f"{needs}; {cuda} here (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}). "
            "Use --runtime eager, compile or onnxruntime on this machine."
        )
    if not torch.cuda.is_available():
        raise SemiStructuredUnavailableError(f"{needs}; torch.cuda.is_available() is False (torch {torch.__version__}).")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise SemiStructuredUnavailableError(f"{needs}; {torch.cuda.get_device_name(device)} has compute capability {major}.{minor}.")
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise SemiStructuredUnavailableError(f"{needs}, with float16 or bfloat16 weights; got {dtype} (use --dtype fp16 or bf16).")
    return device


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask keeping the 2 largest-magnitude weights of every 4 consecutive ones along the last dimension
    (which must be a multiple of 4)."""
    if weight.shape[-1] % 4:
        raise ValueError(f"a 2:4 mask needs a last dimension that is a multiple of 4, got {tuple(weight.shape)}")
    groups = weight.detach().abs().float().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


def is_2_4_sparse(weight: torch.Tensor) -> bool:
    """Whether at most 2 of every 4 consecutive entries of each row are non-zero (and the row length is a
    multiple of 4)."""
    if weight.dim() != 2 or weight.shape[-1] % 4:
        return False
    return bool(((weight.detach().reshape(-1, 4) != 0).sum(dim=1) <= 2).all())


def semi_structured_layers(model: nn.Module) -> list[str]:
    """The names of the ``nn.Linear`` layers whose weights follow the 2:4 pattern (and are not all zeros)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not _is_converted(module.weight):
            weight = module.weight
            if is_2_4_sparse(weight) and bool((weight != 0).any()):
                names.append(name)
    return names


def _is_converted(weight: torch.Tensor) -> bool:
    return type(weight).__name__.startswith("SparseSemiStructured") or type(getattr(weight, "data", None)).__name__.startswith("SparseSemiStructured")


def _shape_ok(weight: torch.Tensor) -> bool:
    rows, cols = weight.shape
    return rows >= MIN_SHAPE[0] and cols >= MIN_SHAPE[1] and rows % MIN_SHAPE[0] == 0 and cols % MIN_SHAPE[1] == 0


@dataclass
class SemiStructuredConversion:
    """What :func:`to_semi_structured` did: the layers converted, and those kept dense with the reason."""

    converted: list[str] = field(default_factory=list)
    kept_dense: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"converted": len(self.converted), "kept_dense": self.kept_dense}


@torch.no_grad()
def to_semi_structured(model: nn.Module, layers: list[str] | None = None) -> SemiStructuredConversion:
    """Convert the 2:4-sparse ``nn.Linear`` layers of ``model`` (on a supporting GPU, in float16 / bfloat16) to
    ``torch.sparse.to_sparse_semi_structured`` weights, in place, for inference.

    Args:
        layers: the layer names to convert (default: :func:`semi_structured_layers`). A named layer that is not
            2:4-sparse is refused; a layer whose shape the kernels cannot take stays dense (listed).

    Raises:
        SemiStructuredUnavailableError: the model's device or dtype cannot run the kernels, or no layer is 2:4.
    """
    param = next(model.parameters())
    check_semi_structured_support(param.device, param.dtype)
    names = semi_structured_layers(model) if layers is None else list(layers)
    if not names:
        raise SemiStructuredUnavailableError(
            "no nn.Linear layer of this model has a 2:4 pattern: prune it with mask_structure='2:4' "
            "(e.g. MagnitudeConfig(mask_structure='2:4')) before using the semi-structured runtime."
        )
    conversion = SemiStructuredConversion()
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear) or not is_2_4_sparse(module.weight):
            raise SemiStructuredUnavailableError(f"{name} is not a 2:4-sparse nn.Linear; it cannot be converted.")
        if not _shape_ok(module.weight):
            conversion.kept_dense[name] = f"shape {tuple(module.weight.shape)} is not a multiple of {MIN_SHAPE}"
            continue
        sparse = torch.sparse.to_sparse_semi_structured(module.weight.detach().contiguous())
        module.weight = nn.Parameter(sparse, requires_grad=False)
        conversion.converted.append(name)
    if not conversion.converted:
        raise SemiStructuredUnavailableError(
            f"none of the {len(names)} 2:4 layers has a shape the kernels take (multiples of {MIN_SHAPE}): " + "; ".join(f"{k}: {v}" for k, v in conversion.kept_dense.items())
        )
    return conversion


@torch.inference_mode()
def compare_with_dense(sparse_model: nn.Module, dense_model: nn.Module, inputs: dict[str, Any]) -> dict[str, float]:
    """The largest absolute and relative differences between the outputs of the converted model and the masked
    dense model (same weights, dense kernels) on ``inputs``: ``{"max_abs_diff", "max_rel_diff", "output_scale"}``."""
    sparse_out = sparse_model(**inputs)
    dense_out = dense_model(**inputs)
    key = next(k for k, v in dense_out.items() if isinstance(v, torch.Tensor))
    a, b = sparse_out[key].float(), dense_out[key].float()
    diff = (a - b).abs()
    scale = float(b.abs().max()) or 1.0
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float(diff.max()) / scale, "output_scale": scale}
