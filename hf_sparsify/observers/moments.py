"""Per-unit activation moments (count, mean, variance) in float64, merged exactly across batches and processes.

VBP needs, for every hidden neuron of every MLP, the mean and the variance of its post-activation value over the
calibration data, pooled over batch × tokens (ViT, DeiT, DINOv2) or batch × height × width (ConvNeXt). The
post-activation value is the *input* of the MLP's consumer (``fc2``, ``down_proj`` = ``silu(gate)·up``,
``pwconv2``), so a forward pre-hook on that module sees it as ``(..., units)`` (a 1×1 ``nn.Conv2d`` consumer, as in
timm's ConvNeXt with ``conv_mlp``, sees ``(batch, units, H, W)``: its channels are the units).

Numerics: each batch is reduced in float64 with a two-pass formula (``mean``, then ``M2 = Σ(x - mean)²``) and
merged into the running moments with Chan et al.'s pairwise update, which is Welford's algorithm applied to
blocks. Across processes (``accelerate launch``) the per-process moments are merged with two sums, which is the
same pairwise formula written with all-reduces:

* ``n = Σ n_p``, ``mean = Σ n_p·mean_p / n``;
* ``M2 = Σ [M2_p + n_p·(mean_p − mean)²]``.

No formula here subtracts raw second moments (``E[x²] − mean²``), so there is no catastrophic cancellation.

```python
>>> from hf_sparsify.observers import collect_activation_moments
>>> batches = [{"pixel_values": torch.randn(8, 3, 32, 32)} for _ in range(2)]
>>> moments = collect_activation_moments(model, {"block0": "vit.layers.0.mlp.fc2"}, batches, disable_tqdm=True)
>>> moments["block0"].mean.shape, moments["block0"].variance.dtype       # one per hidden neuron, float64
(torch.Size([192]), torch.float64)
>>> moments["block0"].count                                               # 2 batches × 8 images × 65 tokens
1040
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import HfSparsifyError
from ..utils import progress
from .distributed import all_reduce_sum, distributed_state, shard_batches

__all__ = [
    "Moments",
    "NonFiniteActivationError",
    "batch_moments",
    "merge_moments",
    "MomentObserver",
    "collect_activation_moments",
]

# float64 elements reduced at once (bounds the temporary copy of a large activation)
_CHUNK_ELEMENTS = 1 << 22


class NonFiniteActivationError(HfSparsifyError, FloatingPointError):
    """An observed activation holds NaN or inf (the message names the module)."""


@dataclass
class Moments:
    """Pooled moments of ``num_units`` units.

    Attributes:
        count: number of pooled values per unit (batch × tokens, or batch × H × W).
        mean: per-unit mean, float64.
        m2: per-unit sum of squared deviations from the mean, float64.
        num_samples: number of images the values came from.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    num_samples: int = 0

    @classmethod
    def empty(cls, num_units: int, device: torch.device | str | None = None) -> "Moments":
        zeros = torch.zeros(num_units, dtype=torch.float64, device=device)
        return cls(count=0, mean=zeros, m2=zeros.clone(), num_samples=0)

    @property
    def variance(self) -> torch.Tensor:
        """Population variance ``M2 / count`` (the variance of the observed values)."""
        if self.count == 0:
            return torch.full_like(self.mean, float("nan"))
        return self.m2 / self.count

    @property
    def sample_variance(self) -> torch.Tensor:
        """Unbiased variance ``M2 / (count - 1)``."""
        if self.count < 2:
            return torch.full_like(self.mean, float("nan"))
        return self.m2 / (self.count - 1)

    def update(self, values: torch.Tensor, num_samples: int = 0) -> "Moments":
        """Add observations ``values`` of shape ``(..., num_units)`` (all leading dimensions are pooled)."""
        merged = merge_moments(self, batch_moments(values))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        self.num_samples += num_samples
        return self

    def all_reduce(self, state=None) -> "Moments":
        """Merge the moments of all processes exactly (in place; a no-op with one process)."""
        state = state or distributed_state()
        if state.num_processes == 1:
            return self
        device = self.mean.device
        head = torch.tensor([float(self.count), float(self.num_samples)], dtype=torch.float64, device=device)
        weighted = torch.cat([head, self.mean * self.count])
        all_reduce_sum(weighted, state)
        count, num_samples = int(round(weighted[0].item())), int(round(weighted[1].item()))
        mean = weighted[2:] / count if count else torch.zeros_like(self.mean)
        m2 = self.m2 + self.count * (self.mean - mean) ** 2
        all_reduce_sum(m2, state)
        self.count, self.num_samples, self.mean, self.m2 = count, num_samples, mean, m2
        return self


def batch_moments(values: torch.Tensor) -> Moments:
    """Moments of one batch, ``values`` of shape ``(..., units)``, computed in float64 (two passes per chunk)."""
    units = values.shape[-1]
    flat = values.detach().reshape(-1, units)
    rows = max(1, _CHUNK_ELEMENTS // max(units, 1))
    total = Moments.empty(units, device=flat.device)
    for chunk in flat.split(rows):
        x = chunk.to(torch.float64)
        mean = x.mean(dim=0)
        m2 = (x - mean).square_().sum(dim=0)
        total = merge_moments(total, Moments(count=x.shape[0], mean=mean, m2=m2))
    return total


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise merge of two sets of moments (exact; Welford's update when ``b`` holds one value)."""
    if b.count == 0:
        return Moments(a.count, a.mean, a.m2, a.num_samples + b.num_samples)
    if a.count == 0:
        return Moments(b.count, b.mean, b.m2, a.num_samples + b.num_samples)
    count = a.count + b.count
    delta = b.mean.to(a.mean.device) - a.mean
    mean = a.mean + delta * (b.count / count)
    m2 = a.m2 + b.m2.to(a.m2.device) + delta.square() * (a.count * b.count / count)
    return Moments(count, mean, m2, a.num_samples + b.num_samples)


class MomentObserver:
    """Forward pre-hooks that accumulate the moments of the *inputs* of some modules.

    Args:
        model: the model.
        modules: ``{key: module name}``; each module's first input ``(..., units)`` is observed. A value
            ``(module name, tokens)`` observes only the tokens ``tokens`` (a slice of the second-to-last axis of a
            ``(batch, tokens, units)`` input, e.g. ``slice(0, 1)`` for the CLS token); one module may be observed
            under several keys.

    Use as a context manager (hooks are removed on exit); call :meth:`start_sample` with each batch's image
    count so that ``num_samples`` is known. Non-finite values are counted, not raised from inside the forward
    pass (so that every process reaches the cross-process check); :meth:`check_finite` raises.
    """

    def __init__(self, model: nn.Module, modules: Mapping[str, str | tuple[str, slice]]):
        self.model = model
        self.modules = {key: value if isinstance(value, str) else value[0] for key, value in modules.items()}
        self.tokens = {key: None if isinstance(value, str) else value[1] for key, value in modules.items()}
        self.moments: dict[str, Moments] = {}
        self.nonfinite: dict[str, int] = {key: 0 for key in self.modules}
        self._handles: list = []
        self._pending_samples = 0

    def __enter__(self) -> "MomentObserver":
        for key, name in self.modules.items():
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_pre_hook(self._hook(key)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, key: str):
        tokens = self.tokens[key]

        def hook(module, inputs):
            values = inputs[0].detach()
            if isinstance(module, nn.Conv2d):  # (batch, channels, H, W): the units are the channels
                values = values.movedim(1, -1)
            if tokens is not None:
                if values.dim() != 3:
                    raise ValueError(f"observing tokens {tokens} of {self.modules[key]} needs a (batch, tokens, units) input, got {tuple(values.shape)}")
                values = values[:, tokens]
            finite = torch.isfinite(values)
            if not bool(finite.all()):
                self.nonfinite[key] += int((~finite).sum())
                return
            moments = self.moments.get(key)
            if moments is None:
                moments = self.moments[key] = Moments.empty(values.shape[-1], device=values.device)
            moments.update(values, num_samples=self._pending_samples)

        return hook

    def start_sample(self, num_images: int) -> None:
        """Tell the observer how many images the next forward pass holds."""
        self._pending_samples = int(num_images)

    def finalize(self, state=None) -> dict[str, Moments]:
        """Merge across processes and check every value was finite; returns ``{key: Moments}``."""
        state = state or distributed_state()
        units = {}
        for key, name in self.modules.items():
            module = self.model.get_submodule(name)
            units[key] = getattr(module, "in_features", getattr(module, "in_channels", None))
        for key in self.modules:
            if key not in self.moments:
                if units[key] is None:
                    raise ValueError(f"{self.modules[key]} was never called and has no in_features")
                device = next(self.model.parameters()).device
                self.moments[key] = Moments.empty(units[key], device=device)
        self.check_finite(state)
        for key in self.modules:
            self.moments[key].all_reduce(state)
        return self.moments

    def check_finite(self, state=None) -> None:
        state = state or distributed_state()
        counts = torch.tensor([float(self.nonfinite[k]) for k in self.modules], dtype=torch.float64)
        if state.num_processes > 1:
            counts = counts.to(state.device) if state.backend == "nccl" else counts
            all_reduce_sum(counts, state)
        bad = [(k, int(c)) for k, c in zip(self.modules, counts.tolist()) if c > 0]
        if bad:
            key, count = bad[0]
            raise NonFiniteActivationError(
                f"{count} non-finite activation value(s) (NaN or inf) reached {self.modules[key]} "
                f"({len(bad)} observed module(s) affected). Check the calibration images (pixel_values must be finite) "
                "and the model's weights; a model in float16 may overflow: run the calibration in float32."
            )


@torch.no_grad()
def collect_activation_moments(
    model: nn.Module,
    modules: Mapping[str, str | tuple[str, slice]],
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device | str | None = None,
    disable_tqdm: bool = False,
    state=None,
) -> dict[str, Moments]:
    """One pass over ``batches`` with hooks on ``modules`` (``{key: module name}``, or ``{key: (module name,
    tokens)}`` to observe some tokens only); returns ``{key: Moments}`` of each module's input, pooled over every
    dimension but the last.

    Under ``accelerate launch`` each process forwards its own share of the batches (round robin) and the
    moments are merged exactly, so every process returns the moments of all batches.
    """
    state = state or distributed_state()
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = param.dtype if param.is_floating_point() else torch.float32
    with MomentObserver(model, modules) as observer:
        for batch in progress(shard_batches(batches, state), desc="activation moments", disable=disable_tqdm, unit="batch"):
            pixel_values = batch["pixel_values"].to(device=device, dtype=dtype)
            observer.start_sample(pixel_values.shape[0])
            model(pixel_values=pixel_values)
    return observer.finalize(state)
