"""Masked mini-batch gradients folded into empirical Fisher blocks (CAP, WoodFisher, FastCAP).

A weight is flattened row-major, ``(out, in·kh·kw)`` as in the reference code, and cut into contiguous blocks of
``B`` entries (:class:`BlockLayout`). For ``N:M`` masks of a ``Conv2d`` the weight is first viewed as
``(out, kh, kw, in)`` so that the groups of ``M`` input channels are contiguous. Each mini-batch gradient is
multiplied by the current mask (``weight != 0``), so pruned coordinates carry no curvature.

:func:`collect_fisher` runs ``num_grads`` backward passes (the model stays in ``eval()``) and accumulates

* ``mode="blocks"``: ``Σ_i g_{i,b} g_{i,b}ᵀ`` for every block ``b`` of every target, shape ``(d/B, B, B)``;
* ``mode="shared"``: ``Σ_i G_iᵀ G_i`` with ``G_i`` the gradient viewed as ``(d/B, B)``, shape ``(B, B)`` (FastCAP),

with batched matrix products over chunks of gradients (one ``baddbmm`` per chunk, not one update per gradient).
Under ``accelerate launch`` every process takes its share of the batches (:func:`shard_batches`) and the sums are
all-reduced, so 1 and N processes give the same statistics. The loss of a batch is

* ``"labels"``: ``model(pixel_values, labels).loss`` (cross-entropy of a classification head);
* ``"features"``: ``⟨v, f(x)⟩ / batch`` with a fresh Gaussian ``v`` per batch, ``f`` the logits or the backbone's
  ``last_hidden_state``. ``E[g gᵀ]`` is then the Gauss–Newton matrix of the feature-matching loss
  ``½‖f(x; w) − f(x; w₀)‖²``: no labels needed (``Dinov2Model``, self-supervised checkpoints);
* a callable ``loss_fn(model, batch) -> scalar``.

```python
>>> layout = BlockLayout.for_weight(layer.weight, block_size=48, name=layer.name)
>>> stats = collect_fisher(model, [FisherTarget(layer.name, layer.weight, layout)], batches, num_grads=256)
>>> stats.sums[layer.name].shape                  # (numel / 48, 48, 48), not yet divided by stats.num_grads
```
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..configuration import LOSS_OPTIONS
from ..errors import HfSparsifyError
from .distributed import all_reduce_sum, distributed_state, shard_batches

__all__ = [
    "BlockLayout",
    "FisherTarget",
    "FisherStatistics",
    "GradientError",
    "collect_fisher",
    "make_loss",
    "model_features",
    "resolve_block_size",
]



class GradientError(HfSparsifyError, RuntimeError):
    """Gradients could not be computed (no usable loss, non-finite values). The message says what to change."""


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


# --------------------------------------------------------------------------------------------- losses
def model_features(outputs: Any) -> torch.Tensor:
    """The tensor a label-free loss is built on: ``logits`` if the model has a head, else ``last_hidden_state``,
    else ``pooler_output``, else the first tensor of the output."""
    for key in ("logits", "last_hidden_state", "pooler_output"):
        value = getattr(outputs, key, None) if not isinstance(outputs, dict) else outputs.get(key)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(outputs, torch.Tensor):
        return outputs
    values = outputs.values() if isinstance(outputs, dict) else (outputs if isinstance(outputs, (tuple, list)) else ())
    for value in values:
        if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
            return value
    raise GradientError(f"The model's output ({type(outputs).__name__}) holds no tensor to build a loss on: use {LOSS_OPTIONS}.")


def _labels_loss(model: nn.Module, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
    if "labels" not in batch:
        raise GradientError(f"loss='labels' needs calibration batches with 'labels', and these have none: use {LOSS_OPTIONS}.")
    try:
        outputs = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
    except TypeError as err:
        if "labels" not in str(err):
            raise
        raise GradientError(
            f"{type(model).__name__} takes no labels, so it has no classification loss for loss='labels': use {LOSS_OPTIONS}."
        ) from None
    loss = getattr(outputs, "loss", None) if not isinstance(outputs, dict) else outputs.get("loss")
    if loss is None:
        raise GradientError(f"{type(model).__name__} returned no loss for the given labels: use {LOSS_OPTIONS}.")
    return loss


def _features_loss(seed: int) -> Callable[[nn.Module, dict[str, torch.Tensor], int], torch.Tensor]:
    def loss(model: nn.Module, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        features = model_features(model(pixel_values=batch["pixel_values"])).float()
        # v depends on the batch's index in the stream only, so any number of processes draws the same v
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        v = torch.randn(features.shape, generator=generator).to(features.device)
        return (features * v).sum() / features.shape[0]

    return loss


def make_loss(loss: str | Callable, seed: int = 0) -> Callable[[nn.Module, dict[str, torch.Tensor], int], torch.Tensor]:
    """``(model, batch, index) -> scalar`` for ``loss="labels"``, ``"features"`` or a ``loss_fn(model, batch)``."""
    if callable(loss):
        return lambda model, batch, index: loss(model, batch)
    if loss == "labels":
        return _labels_loss
    if loss == "features":
        return _features_loss(seed)
    raise GradientError(f"loss={loss!r} is not usable here: use {LOSS_OPTIONS}.")


# --------------------------------------------------------------------------------------------- collection
@dataclass
class FisherTarget:
    """One weight whose Fisher is collected: its name (for messages), the parameter, and its block layout."""

    name: str
    weight: nn.Parameter
    layout: BlockLayout


@dataclass
class FisherStatistics:
    """Summed outer products per target (not divided by ``num_grads``) and the number of gradients summed."""

    sums: dict[str, torch.Tensor]
    num_grads: int
    timings: dict[str, float] = field(default_factory=dict)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """``with timer("phase"):`` adds the phase's wall time (synchronised on CUDA) to ``timings``."""

    def __init__(self, timings: dict[str, float], device: torch.device):
        self.timings, self.device = timings, device

    @contextmanager
    def __call__(self, phase: str):
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start


@contextmanager
def _exact_matmul():
    """Full float32 products for the Fisher sums, whatever the user chose for the model (TF32 keeps 10 bits)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@torch.no_grad()
def _all_reduce(tensor: torch.Tensor, state, device: torch.device) -> None:
    """Sum over processes; CPU tensors go through ``device`` in pieces when the backend (NCCL) needs GPU tensors."""
    if state.num_processes > 1 and tensor.device.type == "cpu" and torch.distributed.get_backend() == "nccl":
        for piece in tensor.view(-1).split(1 << 26):
            staged = piece.to(device)
            all_reduce_sum(staged, state)
            piece.copy_(staged)
    else:
        all_reduce_sum(tensor, state)


@torch.no_grad()
def _accumulate(sums: torch.Tensor, buffer: torch.Tensor, count: int, mode: str) -> None:
    """Add the outer products of ``count`` buffered gradients. ``buffer`` is ``(num_blocks, chunk, B)``."""
    chunk = buffer[:, :count]
    if mode == "blocks":
        sums.baddbmm_(chunk.transpose(1, 2), chunk)
    else:
        flat = chunk.reshape(-1, chunk.shape[-1])
        sums.addmm_(flat.T, flat)


def collect_fisher(
    model: nn.Module,
    targets: Sequence[FisherTarget],
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    loss: str | Callable = "labels",
    mode: str = "blocks",
    device: torch.device | str | None = None,
    fisher_device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    mixed_precision: str = "no",
    seed: int = 0,
    state=None,
    disable_tqdm: bool = True,
) -> FisherStatistics:
    """Accumulate masked mini-batch gradient outer products for ``targets`` over ``batches``.

    Args:
        model: the model (kept in ``eval()``; its ``requires_grad`` flags are restored afterwards).
        targets: the weights and their block layouts.
        batches: calibration batches (dicts with ``pixel_values`` and, for ``loss="labels"``, ``labels``); every
            process passes the same stream, each uses its share (batch ``i`` goes to process ``i % N``).
        loss: ``"labels"``, ``"features"`` or ``loss_fn(model, batch) -> scalar``.
        mode: ``"blocks"`` (one ``B×B`` block per ``B`` weights) or ``"shared"`` (one ``B×B`` per target).
        device: where the model runs (default: the model's device).
        fisher_device: where the sums live (default: ``device``).
        dtype: dtype of the sums (``float32`` or ``float64``); their products never use TF32 (the model's
            forward/backward follow the user's ``torch.backends`` settings).
        chunk_size: gradients buffered per batched product (default: up to 64, within ~256 MiB of buffer per
            target group on CPU, 2 GiB on GPU).
        mixed_precision: ``"no"`` or ``"bf16"`` (autocast of the forward/backward only; gradients stay fp32).
        seed: seed of the random directions of ``loss="features"``.

    Returns:
        :class:`FisherStatistics` with the summed outer products (all-reduced over processes) and the total
        number of gradients.

    Raises:
        GradientError: no usable loss, or non-finite gradients (the message names the layer).
    """
    state = state or distributed_state()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    fisher_device = torch.device(fisher_device) if fisher_device is not None else device
    if mode not in ("blocks", "shared"):
        raise ValueError(f"mode must be 'blocks' or 'shared', got {mode!r}")
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    loss_fn = make_loss(loss, seed)
    timings: dict[str, float] = {}
    timer = _Timer(timings, device)

    total = sum(t.layout.numel for t in targets)
    if chunk_size is None:
        budget = (2 << 30) if fisher_device.type == "cuda" else (256 << 20)
        chunk_size = int(max(1, min(64, budget // max(1, total * torch.finfo(dtype).bits // 8))))
    sums: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for t in targets:
        nb, b = t.layout.num_blocks, t.layout.block_size
        shape = (nb, b, b) if mode == "blocks" else (b, b)
        sums[t.name] = torch.zeros(shape, dtype=dtype, device=fisher_device)
        buffers[t.name] = torch.empty((nb, chunk_size, b), dtype=dtype, device=fisher_device)
        masks[t.name] = t.layout.to_blocks(t.weight.detach() != 0).to(fisher_device)

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    target_ids = {id(t.weight) for t in targets}
    for p in model.parameters():
        p.requires_grad_(id(p) in target_ids)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if mixed_precision == "bf16" else nullcontext()

    count, filled, first_index = 0, 0, None

    def flush() -> None:
        nonlocal filled
        if not filled:
            return
        with timer("fisher"):
            for t in targets:
                buf = buffers[t.name]
                finite = torch.isfinite(buf[:, :filled]).all()
                if not bool(finite):
                    raise GradientError(
                        f"Non-finite gradients for layer {t.name} (batches from index {first_index}): check the "
                        "calibration inputs for NaN/inf, the model's weights, and use mixed_precision='no'."
                    )
                with _exact_matmul():
                    _accumulate(sums[t.name], buf, filled, mode)
        filled = 0

    try:
        from ..utils import progress

        for index, batch in progress(shard_batches(enumerate(batches), state), desc="gradients", disable=disable_tqdm):
            if filled == 0:
                first_index = index
            with timer("gradients"):
                batch = _to_device(batch, device)
                for t in targets:
                    t.weight.grad = None
                with torch.enable_grad(), autocast:
                    value = loss_fn(model, batch, index)
                if not isinstance(value, torch.Tensor) or value.dim() != 0:
                    raise GradientError(f"The loss must be a scalar tensor, got {type(value).__name__} {getattr(value, 'shape', '')}: use {LOSS_OPTIONS}.")
                if not value.requires_grad:
                    raise GradientError(f"The loss does not depend on the pruned weights (no gradient): use {LOSS_OPTIONS}.")
                value.float().backward()
            with timer("fisher"):
                for t in targets:
                    grad = t.weight.grad
                    if grad is None:
                        raise GradientError(f"Layer {t.name} got no gradient from the loss: it is not used by the model's output; leave it out with ignore=[...] or use another loss.")
                    block = t.layout.to_blocks(grad).to(fisher_device, dtype)
                    buffers[t.name][:, filled].copy_(block * masks[t.name])
            filled += 1
            count += 1
            if filled == chunk_size:
                flush()
        flush()
    finally:
        for t in targets:
            t.weight.grad = None
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))

    with timer("fisher"):
        counter = torch.tensor([float(count)], dtype=torch.float64, device=fisher_device)
        _all_reduce(counter, state, device)
        for t in targets:
            _all_reduce(sums[t.name], state, device)
    total_grads = int(counter.item())
    if total_grads == 0:
        raise GradientError("No gradient was computed: the calibration data yielded no batch for this process.")
    return FisherStatistics(sums=sums, num_grads=total_grads, timings=timings)
