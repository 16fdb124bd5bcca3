"""Masked mini-batch gradients folded into empirical Fisher blocks (CAP, WoodFisher, FastCAP).

A weight is flattened row-major, ``(out, in·kh·kw)`` as in the reference code, and cut into contiguous blocks of
``B`` entries (:class:`BlockLayout`). For ``N:M`` masks of a ``Conv2d`` the weight is first viewed as
``(out, kh, kw, in)`` so that the groups of ``M`` input channels are contiguous. Each mini-batch gradient is
multiplied by the current mask (``weight != 0``), so pruned coordinates carry no curvature.

:class:`FisherObserver` is one observer of the gradient engine
(:func:`~hf_sparsify.observers.gradients.run_gradients`, which owns the loss, ``requires_grad``, autocast, the
sharding over processes and the all-reduce); :func:`collect_fisher` runs it over a stream of batches (the model
stays in ``eval()``) and accumulates

* ``mode="blocks"``: ``Σ_i g_{i,b} g_{i,b}ᵀ`` for every block ``b`` of every target, shape ``(d/B, B, B)``;
* ``mode="shared"``: ``Σ_i G_iᵀ G_i`` with ``G_i`` the gradient viewed as ``(d/B, B)``, shape ``(B, B)`` (FastCAP),

with batched matrix products over chunks of gradients (one ``baddbmm`` per chunk, not one update per gradient),
in ``float64`` by default (or ``float32``) whatever the model's dtype. The loss of a batch is

* ``"labels"``: ``model(pixel_values, labels).loss`` (cross-entropy of a classification head);
* ``"features"``: ``⟨v, f(x)⟩ / batch`` with a fresh Gaussian ``v`` per batch, ``f`` the logits or the backbone's
  ``last_hidden_state``. ``E[g gᵀ]`` is then the Gauss–Newton matrix of the feature-matching loss
  ``½‖f(x; w) − f(x; w₀)‖²``: no labels needed (``Dinov2Model``, self-supervised checkpoints);
* a callable ``loss_fn(model, batch) -> scalar``.

```python
>>> from hf_sparsify.data import CalibrationData
>>> from hf_sparsify.observers.fisher import BlockLayout, FisherTarget, collect_fisher
>>> layer = model.vit.layers[0].mlp.fc1
>>> layout = BlockLayout.for_weight(layer.weight, block_size=48, name="fc1")
>>> batches = CalibrationData.from_source(calibration, model=model, image_processor=processor, batch_size=8, num_samples=64)
>>> stats = collect_fisher(model, [FisherTarget("fc1", layer.weight, layout)], batches)
>>> stats.sums["fc1"].shape, stats.num_grads, stats.num_images      # sums not yet divided by num_grads
(torch.Size([192, 48, 48]), 8, 64)
```
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..utils import PhaseTimer, workspace_bytes
from .gradients import GradientError, GradientObserver, GradientStep, make_loss, model_features, run_gradients

__all__ = [
    "BlockLayout",
    "FisherObserver",
    "FisherTarget",
    "FisherStatistics",
    "GradientError",
    "collect_fisher",
    "buffer_dtype",
    "fisher_chunk_size",
    "make_loss",
    "model_features",
    "resolve_block_size",
]


# --------------------------------------------------------------------------------------------- block layout
def _divisors(n: int) -> list[int]:
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return small + large[::-1]


def resolve_block_size(numel: int, requested: int, *, multiple_of: int = 1, name: str = "layer") -> int:
    """The Fisher block size used for a weight of ``numel`` entries: the smallest divisor of ``numel`` that is
    ``≥ requested`` (the reference's rule), and a multiple of ``multiple_of`` (``M`` of an N:M mask).

    >>> resolve_block_size(2304, 50)   # 2304 = 2^8·9: divisors ..., 48, 64, ...
    64
    """
    if requested < 1:
        raise ValueError(f"fisher_block_size must be ≥ 1, got {requested}.")
    if requested > numel:
        raise ValueError(
            f"fisher_block_size={requested} is larger than layer {name} ({numel} weights): choose "
            f"fisher_block_size ≤ {numel}, or leave the layer out with ignore=[...]."
        )
    for d in _divisors(numel):
        if d >= requested and d % multiple_of == 0:
            return d
    raise ValueError(f"layer {name} ({numel} weights) has no block size ≥ {requested} that is a multiple of {multiple_of}.")


@dataclass(frozen=True)
class BlockLayout:
    """How a weight is cut into Fisher blocks.

    Attributes:
        shape: the weight's shape.
        block_size: ``B``, a divisor of the weight's size.
        nm_order: view a 4-d (conv) weight as ``(out, kh, kw, in)`` first, so N:M groups are contiguous.
    """

    shape: tuple[int, ...]
    block_size: int
    nm_order: bool = False

    @classmethod
    def for_weight(cls, weight: torch.Tensor, block_size: int, *, multiple_of: int = 1, name: str = "layer") -> "BlockLayout":
        """The layout of ``weight`` with the divisor rule applied to ``block_size``."""
        size = resolve_block_size(weight.numel(), block_size, multiple_of=multiple_of, name=name)
        return cls(tuple(weight.shape), size, nm_order=multiple_of > 1 and weight.dim() == 4)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_blocks(self) -> int:
        return self.numel // self.block_size

    def to_blocks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (shaped like the weight) as ``(num_blocks, B)`` (a view when possible)."""
        if self.nm_order and tensor.dim() == 4:
            tensor = tensor.permute(0, 2, 3, 1)
        return tensor.reshape(self.num_blocks, self.block_size)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_blocks`: a contiguous tensor shaped like the weight."""
        if self.nm_order and len(self.shape) == 4:
            out, cin, kh, kw = self.shape
            return blocks.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
        return blocks.reshape(self.shape)


# --------------------------------------------------------------------------------------------- collection
@dataclass
class FisherTarget:
    """One weight whose Fisher is collected: its name (for messages), the parameter, and its block layout."""

    name: str
    weight: nn.Parameter
    layout: BlockLayout


@dataclass
class FisherStatistics:
    """Summed outer products per target (not divided by ``num_grads``), the number of gradients summed and the
    number of images in their batches (both counted over all processes), and the phases' seconds."""

    sums: dict[str, torch.Tensor]
    num_grads: int
    timings: dict[str, float] = field(default_factory=dict)
    num_images: int = 0


@contextmanager
def _exact_matmul():
    """Full-precision products for the Fisher sums, whatever the user chose for the model (TF32 keeps 10 bits)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


#: the gradient buffer of block sums may take up to this fraction of the Fisher store when that is more than the
#: workspace (large models), so that the peak memory stays within the store plus 25% (at DeiT-tiny size, B = 192:
#: 0.05 → peak 1.20× the store, Fisher products 3.2× below the machine's bmm rate; 0.08 → 1.245×, 1.7×; 0.09 →
#: 1.256×, over the 25%: benchmarks/RESULTS.md)
STORE_FRACTION_FOR_BUFFER = 0.08


def buffer_dtype(targets: Sequence[FisherTarget], dtype: torch.dtype) -> torch.dtype:
    """The dtype the gradients are buffered in before they are folded into sums of ``dtype``: float32 unless a
    target is float64 (float32, bfloat16 and float16 gradients, the latter unscaled in float32, are float32
    numbers, and casting them to float64 for the products is exact), so the buffer takes half the memory."""
    if dtype == torch.float64 and any(getattr(t.weight, "dtype", None) == torch.float64 for t in targets):
        return torch.float64
    return torch.float32


def fisher_chunk_size(
    targets: Sequence[FisherTarget], dtype: torch.dtype, device: torch.device | str, mode: str = "blocks", buffered: torch.dtype | None = None
) -> int:
    """Gradients buffered per batched product: up to 64, within :func:`~hf_sparsify.utils.workspace_bytes` or,
    for ``mode="blocks"``, :data:`STORE_FRACTION_FOR_BUFFER` of the Fisher store (sums of ``dtype``) when that is
    larger; ``buffered``: the buffer's dtype (default ``dtype``).

    Every product reads and writes the whole store (``d·B`` numbers) to add ``chunk`` gradients, so a small chunk
    makes the accumulation memory-bound: at DeiT-tiny size (5.3M weights, B = 192) the 256 MiB workspace alone
    held 6 float64 gradients, and the products ran several times below the machine's matmul rate (issue 17.3)."""
    total = sum(t.layout.numel for t in targets) * (torch.finfo(buffered or dtype).bits // 8)
    budget = workspace_bytes(device)
    if mode == "blocks":
        store = sum(t.layout.numel * t.layout.block_size for t in targets) * (torch.finfo(dtype).bits // 8)
        budget = max(budget, int(store * STORE_FRACTION_FOR_BUFFER))
    return int(max(1, min(64, budget // max(1, total))))


class FisherObserver(GradientObserver):
    """Masked mini-batch gradients folded into Fisher sums: an observer of the gradient engine.

    Args:
        targets: the weights and their block layouts.
        mode: ``"blocks"`` (one ``B×B`` block per ``B`` weights) or ``"shared"`` (one ``B×B`` per target).
        dtype: dtype of the sums and of the gradient buffer (``float32`` or ``float64``), whatever the model's.
        device: where the sums live.
        chunk_size: gradients buffered per batched product (default: :func:`fisher_chunk_size`).
    """

    def __init__(self, targets: Sequence[FisherTarget], *, mode: str = "blocks", dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", chunk_size: int | None = None):
        if mode not in ("blocks", "shared"):
            raise ValueError(f"mode must be 'blocks' or 'shared', got {mode!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the Fisher sums are float32 or float64, got {dtype}")
        self.targets, self.mode, self.dtype, self.device = list(targets), mode, dtype, torch.device(device)
        self.buffer_dtype = buffer_dtype(self.targets, dtype)
        self.chunk_size = chunk_size or fisher_chunk_size(self.targets, dtype, self.device, mode, self.buffer_dtype)
        self.sums: dict[str, torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}
        for t in self.targets:
            nb, b = t.layout.num_blocks, t.layout.block_size
            shape = (nb, b, b) if mode == "blocks" else (b, b)
            self.sums[t.name] = torch.zeros(shape, dtype=dtype, device=self.device)
            self._buffers[t.name] = torch.empty((nb, self.chunk_size, b), dtype=self.buffer_dtype, device=self.device)
            self._masks[t.name] = t.layout.to_blocks(t.weight.detach() != 0).to(self.device)
        self._filled = 0
        self._first_index: int | None = None
        self._timer = PhaseTimer()

    def leaves(self) -> list[torch.Tensor]:
        return [t.weight for t in self.targets]

    def observe(self, step: GradientStep) -> None:
        self._timer = step.timer
        with step.timer("gradients"):
            grads = step.grad(self.leaves())
        with step.timer("fisher"):
            if self._filled == 0:
                self._first_index = step.index
            for t, grad in zip(self.targets, grads):
                if grad is None:
                    raise GradientError(
                        f"Layer {t.name} got no gradient from the loss: it is not used by the model's output; leave it "
                        "out with ignore=[...] or use another loss."
                    )
                # masked and cast to the buffer's dtype in one pass, straight into the buffer (exact: the mask is 0/1)
                block = t.layout.to_blocks(grad).to(self.device)
                torch.mul(block, self._masks[t.name], out=self._buffers[t.name][:, self._filled])
            self._filled += 1
            if self._filled == self.chunk_size:
                self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        filled, self._filled = self._filled, 0
        if not filled:
            return
        for t in self.targets:
            chunk = self._buffers[t.name][:, :filled]
            if not bool(torch.isfinite(chunk).all()):
                raise GradientError(
                    f"Non-finite gradients for layer {t.name} (batches from index {self._first_index}): check the "
                    "calibration inputs for NaN/inf, the model's weights, and use mixed_precision='no'."
                )
            chunk = chunk.to(self.dtype)  # exact (float32 numbers), one layer at a time
            with _exact_matmul():
                if self.mode == "blocks":
                    self.sums[t.name].baddbmm_(chunk.transpose(1, 2), chunk)
                else:
                    flat = chunk.reshape(-1, chunk.shape[-1])
                    self.sums[t.name].addmm_(flat.T, flat)

    def reduce(self, all_reduce) -> None:
        with self._timer("fisher"):
            self._flush()
            self._buffers.clear()
            for t in self.targets:
                all_reduce(self.sums[t.name])


def collect_fisher(
    model: nn.Module,
    targets: Sequence[FisherTarget],
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    loss: str | Callable = "labels",
    mode: str = "blocks",
    device: torch.device | str | None = None,
    fisher_device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
    mixed_precision: str = "no",
    seed: int = 0,
    state=None,
    desc: str = "gradients",
    disable_tqdm: bool = True,
) -> FisherStatistics:
    """Accumulate masked mini-batch gradient outer products for ``targets`` over ``batches`` (a
    :class:`FisherObserver` on :func:`~hf_sparsify.observers.gradients.run_gradients`).

    Args:
        model: the model (kept in ``eval()``; its ``requires_grad`` flags are restored afterwards).
        targets: the weights and their block layouts.
        batches: calibration batches (dicts with ``pixel_values`` and, for ``loss="labels"``, ``labels``); every
            process passes the same stream, each uses its share (batch ``i`` goes to process ``i % N``).
        loss: ``"labels"``, ``"features"`` or ``loss_fn(model, batch) -> scalar``.
        mode: ``"blocks"`` (one ``B×B`` block per ``B`` weights) or ``"shared"`` (one ``B×B`` per target).
        device: where the model runs (default: the model's device).
        fisher_device: where the sums live (default: ``device``).
        dtype: dtype of the sums (``float64``, default, or ``float32``), whatever the model's dtype; their
            products never use TF32 (the model's forward/backward follow the user's ``torch.backends`` settings).
        chunk_size: gradients buffered per batched product (default: :func:`fisher_chunk_size`, up to 64).
        mixed_precision: ``"no"`` or ``"bf16"`` (autocast of the forward pass only).
        seed: seed of the random directions of ``loss="features"``.
        desc: the progress bar's label.

    Returns:
        :class:`FisherStatistics` with the summed outer products (all-reduced over processes) and the total
        numbers of gradients and images.

    Raises:
        GradientError: no usable loss, or non-finite gradients (the message names the layer).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    fisher_device = torch.device(fisher_device) if fisher_device is not None else device
    observer = FisherObserver(targets, mode=mode, dtype=dtype, device=fisher_device, chunk_size=chunk_size)
    timings: dict[str, float] = {}
    run = run_gradients(
        model, batches, observer, loss=loss, device=device, mixed_precision=mixed_precision, seed=seed, state=state,
        timings=timings, desc=desc, disable_tqdm=disable_tqdm,
    )  # fmt: skip
    return FisherStatistics(sums=observer.sums, num_grads=run.num_batches, timings=timings, num_images=run.num_images)
