"""The gradient engine: one loop over calibration batches for every method that needs gradients.

:func:`run_gradients` takes a model, calibration batches and one or more :class:`GradientObserver` objects. For
each batch of this process's share it computes the loss inside ``torch.enable_grad()`` (and the ``bf16`` autocast
of ``mixed_precision``), and hands a :class:`GradientStep` ``(index, batch, loss)`` to the observers, which take
``torch.autograd.grad`` themselves: plain gradients (:meth:`GradientStep.grad`), gradients of extra leaf tensors
(gates that scale a layer's output), or Hessian-vector products by double backward (``create_graph=True``). What
the engine does once, for all of them:

* **the loss** (:func:`make_loss`): ``"labels"`` (the model's own loss on labelled batches), ``"features"``
  (label-free: ``⟨v, f(x)⟩/batch`` with a fresh Gaussian ``v`` per batch, whose gradient outer products estimate
  the Gauss–Newton matrix of feature matching), ``"kl"`` (label-free: the divergence from the outputs the model
  gives at the start of the step; zero gradient there, its Hessian is the Fisher / Gauss–Newton matrix, for
  Hessian-vector products), or a callable ``loss_fn(model, batch) -> scalar``;
* **``requires_grad``**: only the observers' leaves require grad during the pass (so autograd computes nothing
  else); every flag is restored afterwards, also on errors;
* **every dtype**: batches are cast to the model's floating dtype; ``mixed_precision="bf16"`` autocasts float32
  models only; the loss is promoted to float32 (float64 stays
  float64); for float16 leaves :meth:`GradientStep.grad` scales the loss (halving the scale on overflow) and returns
  the unscaled gradients in float32, so small gradients do not underflow;
* **data parallelism**: under ``accelerate launch`` batch ``i`` goes to process ``i % N``; a windowed
  :class:`~hf_sparsify.data.CalibrationData` builds only this process's batches; the observers' sums and the
  engine's counts are all-reduced, so 1 and N processes end with the same statistics;
* **progress and time**: a progress bar with a total (so it shows an ETA) and the ``"gradients"`` phase in the
  timings (:class:`~hf_sparsify.utils.PhaseTimer`); observers time their own phases with ``step.timer``.

Example: the summed squared gradient norm of one layer over 32 calibration images.

```python
>>> from hf_sparsify.data import CalibrationData
>>> from hf_sparsify.observers.gradients import GradientObserver, run_gradients
>>> class SquaredNorm(GradientObserver):
...     def __init__(self, weight):
...         self.weight, self.total = weight, torch.zeros((), dtype=torch.float64)
...     def leaves(self):
...         return [self.weight]
...     def observe(self, step):
...         (grad,) = step.grad([self.weight])
...         self.total += grad.double().square().sum()
...     def reduce(self, all_reduce):
...         all_reduce(self.total)
>>> batches = CalibrationData.from_source(calibration, model=model, image_processor=processor, batch_size=8, num_samples=32)
>>> observer = SquaredNorm(model.vit.layers[0].mlp.fc1.weight)
>>> run = run_gradients(model, batches, observer, loss="labels")
>>> run.num_batches, run.num_images, bool(observer.total > 0)
(4, 32, True)
```

A Hessian-vector product ``H v`` of the loss w.r.t. the same weight is one more ``torch.autograd.grad`` inside
``observe``: ``(g,) = step.grad([w], create_graph=True)``, then
``(hv,) = torch.autograd.grad((g * v).sum(), [w])``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..configuration import LOSS_OPTIONS
from ..errors import HfSparsifyError
from ..utils import PhaseTimer, get_logger, progress
from .distributed import all_reduce_sum, distributed_state, shard_batches

__all__ = [
    "GradientError",
    "GradientObserver",
    "GradientPass",
    "GradientStep",
    "LossFunction",
    "make_loss",
    "model_features",
    "run_gradients",
]

logger = get_logger(__name__)

#: ``(model, batch, index) -> scalar``: the loss of one calibration batch (``index``: its place in the stream)
LossFunction = Callable[[nn.Module, dict[str, Any], int], torch.Tensor]


class GradientError(HfSparsifyError, RuntimeError):
    """Gradients could not be computed (no usable loss, non-finite values). The message says what to change."""


# --------------------------------------------------------------------------------------------- losses
def model_features(outputs: Any) -> torch.Tensor:
    """The tensor a label-free loss is built on: ``logits`` if the model has a head, else ``last_hidden_state``,
    else ``pooler_output``, else the first floating tensor of the output."""
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


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32, or float64 when it is float64 (half-precision values are promoted)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _labels_loss(model: nn.Module, batch: dict[str, Any], index: int) -> torch.Tensor:
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
    if loss is not None:
        return loss
    # an inference-only head (DeiTForImageClassificationWithTeacher) returns logits but no loss: the cross-entropy of
    # the logits it predicts with (DeiT: the mean of the class- and distillation-token heads)
    logits = getattr(outputs, "logits", None) if not isinstance(outputs, dict) else outputs.get("logits")
    labels = batch["labels"]
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and isinstance(labels, torch.Tensor) and not torch.is_floating_point(labels):
        return torch.nn.functional.cross_entropy(_at_least_float32(logits), labels.to(logits.device))
    raise GradientError(f"{type(model).__name__} returned no loss for the given labels: use {LOSS_OPTIONS}.")


def _features_loss(seed: int) -> LossFunction:
    def loss(model: nn.Module, batch: dict[str, Any], index: int) -> torch.Tensor:
        features = _at_least_float32(model_features(model(pixel_values=batch["pixel_values"])))
        # v depends on the batch's index in the stream only, so any number of processes draws the same v
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        v = torch.randn(features.shape, generator=generator).to(device=features.device, dtype=features.dtype)
        return (features * v).sum() / features.shape[0]

    return loss


def _kl_loss(model: nn.Module, batch: dict[str, Any], index: int) -> torch.Tensor:
    # the reference outputs are the model's own at the current weights, computed without a graph
    with torch.no_grad():
        reference = _at_least_float32(model_features(model(pixel_values=batch["pixel_values"])))
    features = _at_least_float32(model_features(model(pixel_values=batch["pixel_values"])))
    if features.dim() == 2:  # logits: KL(p_ref || p) averaged over the batch
        return torch.nn.functional.kl_div(features.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="batchmean")
    # hidden states: ½‖f − f_ref‖² per image (the Gauss–Newton loss of feature matching)
    return 0.5 * (features - reference).square().sum() / features.shape[0]


def make_loss(loss: str | Callable, seed: int = 0) -> LossFunction:
    """``(model, batch, index) -> scalar`` for ``loss="labels"``, ``"features"``, ``"kl"`` or a
    ``loss_fn(model, batch)``.

    ``"kl"`` is the divergence of the model's outputs from the outputs it gives at the current weights (logits:
    ``KL(p_ref ‖ p)``; hidden states: ``½‖f − f_ref‖²``): its gradient is zero where the step starts and its
    Hessian is the Fisher / Gauss–Newton matrix, which is what Hessian-vector products need (not Fisher sums).
    """
    if callable(loss):
        return lambda model, batch, index: loss(model, batch)
    if loss == "labels":
        return _labels_loss
    if loss == "features":
        return _features_loss(seed)
    if loss == "kl":
        return _kl_loss
    raise GradientError(f"loss={loss!r} is not usable here: use {LOSS_OPTIONS}.")


# --------------------------------------------------------------------------------------------- observers
class _LossScaler:
    """Loss scaling for float16 gradients: start at 2^15, halve on overflow (and retry the batch), double again
    after 16 clean batches. Powers of two, so unscaling is exact."""

    initial = 2.0**15

    def __init__(self) -> None:
        self.scale = self.initial
        self._clean = 0

    def overflowed(self) -> bool:
        self._clean = 0
        if self.scale <= 1.0:
            return False
        self.scale /= 2
        return True

    def succeeded(self) -> None:
        self._clean += 1
        if self._clean >= 16 and self.scale < self.initial:
            self.scale *= 2
            self._clean = 0


@dataclass
class GradientStep:
    """One calibration batch handed to the observers.

    Attributes:
        index: the batch's place in the calibration stream (the same on every process).
        batch: the batch, on the model's device, floating tensors in the model's dtype.
        loss: the scalar loss (float32, or float64 for a float64 model), differentiable w.r.t. the leaves.
        num_images: images in the batch.
        timer: the engine's :class:`~hf_sparsify.utils.PhaseTimer`, for the observers' own phases.
        retain_graph: whether another observer will differentiate the same loss after this one.
    """

    index: int
    batch: dict[str, Any]
    loss: torch.Tensor
    num_images: int
    timer: PhaseTimer
    retain_graph: bool = False
    _scaler: _LossScaler | None = field(default=None, repr=False)

    def grad(self, inputs: Sequence[torch.Tensor], *, create_graph: bool = False, allow_unused: bool = True) -> list[torch.Tensor | None]:
        """``∂ loss / ∂ inputs`` (``None`` for an input the loss does not depend on, when ``allow_unused``).

        Gradients of float16 inputs are computed with a scaled loss and returned unscaled in float32 (a batch whose
        scaled gradients overflow is differentiated again with half the scale); others come in their own dtype.
        ``create_graph=True`` keeps the graph of the gradients, for Hessian-vector products by double backward
        (no loss scaling then).
        """
        inputs = list(inputs)
        retain = self.retain_graph or create_graph
        half = any(t.dtype == torch.float16 for t in inputs)
        if not half or create_graph:
            return list(torch.autograd.grad(self.loss, inputs, retain_graph=retain, create_graph=create_graph, allow_unused=allow_unused))
        if self._scaler is None:
            self._scaler = _LossScaler()
        while True:
            scale = self._scaler.scale
            grads = torch.autograd.grad(self.loss * scale, inputs, retain_graph=True, allow_unused=allow_unused)
            finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
            if finite or not self._scaler.overflowed():
                break
        if finite:
            self._scaler.succeeded()
        return [None if g is None else _at_least_float32(g) / scale for g in grads]


class GradientObserver:
    """What :func:`run_gradients` calls. Subclasses implement :meth:`observe` and usually :meth:`leaves` and
    :meth:`reduce`."""

    def leaves(self) -> Sequence[torch.Tensor]:
        """The leaf tensors that must require grad during the pass (parameters of the model, or extra leaves such
        as gates the observer hooked into it); their ``requires_grad`` flags are restored afterwards."""
        return []

    def observe(self, step: GradientStep) -> None:
        """Use one batch: take gradients of ``step.loss`` (``step.grad(...)`` or ``torch.autograd.grad``) and
        accumulate what the method needs."""
        raise NotImplementedError

    def reduce(self, all_reduce: Callable[[torch.Tensor], Any]) -> None:
        """End of the pass: finish pending work and sum the statistics over processes with ``all_reduce(tensor)``
        (in place; a no-op with one process). Every process calls it, also one that saw no batch."""


@dataclass
class GradientPass:
    """What a pass of :func:`run_gradients` did, summed over processes.

    Attributes:
        num_batches: batches (gradients) observed.
        num_images: images in those batches.
        timings: seconds per phase (``"gradients"`` and the observers' own).
    """

    num_batches: int
    num_images: int
    timings: dict[str, float]


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _prepare(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            cast = dtype if dtype is not None and torch.is_floating_point(value) else None
            value = value.to(device=device, dtype=cast, non_blocking=True)
        out[key] = value
    return out


def _num_images(batch: dict[str, Any]) -> int:
    value = batch.get("pixel_values")
    if not isinstance(value, torch.Tensor):
        value = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return int(value.shape[0]) if value is not None else 1


def _share(batches: Iterable[dict[str, Any]], state) -> tuple[Iterator[tuple[int, dict[str, Any]]], int | None]:
    """This process's ``(index, batch)`` pairs, and how many there will be (``None`` when unknown)."""
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    mine = None if total is None else len(range(state.process_index, total, state.num_processes))
    indexed = getattr(batches, "indexed", None)
    if callable(indexed):  # a calibration window builds only this process's batches
        return indexed(state.process_index, state.num_processes), mine
    return shard_batches(enumerate(batches), state), mine


def run_gradients(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    observers: GradientObserver | Sequence[GradientObserver],
    *,
    loss: str | Callable = "labels",
    device: torch.device | str | None = None,
    mixed_precision: str = "no",
    seed: int = 0,
    state=None,
    timings: dict[str, float] | None = None,
    desc: str = "gradients",
    disable_tqdm: bool = True,
) -> GradientPass:
    """Run ``observers`` over the gradients of ``loss`` on ``batches`` (see the module docstring).

    Args:
        model: the model; its mode (``eval()``) is left as it is.
        batches: calibration batches (dicts with ``pixel_values`` and, for ``loss="labels"``, ``labels``); every
            process passes the same stream and uses its share. A ``CalibrationData`` window
            (``calibration.window(start, stop)``) builds only this process's batches.
        observers: one observer or several (all see the same loss; each but the last keeps the graph).
        loss: ``"labels"``, ``"features"``, ``"kl"`` or ``loss_fn(model, batch) -> scalar`` (:func:`make_loss`).
        device: where the model runs (default: the device of its first parameter).
        mixed_precision: ``"no"`` or ``"bf16"``: autocast of the forward pass that builds the loss, for float32
            models (a bfloat16, float16 or float64 model runs in its own dtype).
        seed: seed of the random directions of ``loss="features"``.
        state: Accelerate's process state (default: :func:`~hf_sparsify.observers.distributed_state`).
        timings: a dict the phases' seconds are added to (default: a new one, returned in the result).
        desc: the progress bar's label.
        disable_tqdm: hide the progress bar.

    Returns:
        A :class:`GradientPass` with the numbers of batches and images (summed over processes) and the timings.

    Raises:
        GradientError: no usable loss, a loss that does not depend on the leaves, or no batch at all.
    """
    observers = [observers] if isinstance(observers, GradientObserver) else list(observers)
    if not observers:
        raise ValueError("run_gradients needs at least one observer")
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    state = state or distributed_state()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = make_loss(loss, seed)
    timer = PhaseTimer(timings if timings is not None else {})
    dtype = _model_dtype(model)
    autocast = nullcontext
    if mixed_precision == "bf16":
        if dtype in (None, torch.float32):
            autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # noqa: E731
        else:  # a half-precision or float64 model runs in its own dtype (autocast only lowers float32 ops)
            logger.info(f"hf_sparsify: mixed_precision='bf16' autocasts float32 models; this {dtype} model runs in its own dtype.")

    leaves = list({id(t): t for obs in observers for t in obs.leaves()}.values())
    params = list(model.parameters())
    param_ids = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in params] + [(t, t.requires_grad) for t in leaves if id(t) not in param_ids]
    scaler = _LossScaler()
    num_batches = num_images = 0
    try:
        for p in params:
            p.requires_grad_(False)
        for t in leaves:
            t.requires_grad_(True)
        stream, total = _share(batches, state)
        for index, batch in progress(stream, desc=desc, total=total, disable=disable_tqdm, unit="batch"):
            with timer("gradients"):
                batch = _prepare(batch, device, dtype)
                with torch.enable_grad():
                    with autocast():
                        value = loss_fn(model, batch, index)
                    if not isinstance(value, torch.Tensor) or value.dim() != 0:
                        raise GradientError(
                            f"The loss must be a scalar tensor, got {type(value).__name__} {tuple(getattr(value, 'shape', ()))}: use {LOSS_OPTIONS}."
                        )
                    if not value.requires_grad:
                        raise GradientError(f"The loss does not depend on the observed weights (no gradient): use {LOSS_OPTIONS}.")
                    value = _at_least_float32(value)
            count = _num_images(batch)
            with torch.enable_grad():
                for position, observer in enumerate(observers):
                    retain = position < len(observers) - 1
                    observer.observe(GradientStep(index, batch, value, count, timer, retain, scaler))
            del value
            num_batches += 1
            num_images += count
    finally:
        for tensor, flag in flags:
            tensor.requires_grad_(flag)

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor, state, via=device)

    counts = torch.tensor([float(num_batches), float(num_images)], dtype=torch.float64, device=device)
    reduce(counts)
    for observer in observers:
        observer.reduce(reduce)
    num_batches, num_images = (int(round(v)) for v in counts.tolist())
    if num_batches == 0:
        raise GradientError("No gradient was computed: the calibration data yielded no batch.")
    return GradientPass(num_batches=num_batches, num_images=num_images, timings=timer.timings)

