"""Gates on structures, and the gradient observers of second-order structured pruning (SOSP) built on them.

A structure ``s`` (an MLP hidden neuron, an attention head, a ConvNeXt hidden channel) is **gated on its outgoing
weights**: a forward pre-hook on its group's consumer (``fc2``, ``down_proj``, ``o_proj``, ``pwconv2``) multiplies
the consumer's input by a gate vector ``γ`` (one entry per unit, repeated over a head's ``head_dim`` coordinates),
``γ = 1``. The consumer then computes ``W (x ⊙ γ) + b = (W diag γ) x + b``, so the model's parameters are

    θ(γ) = θ_rest + Σ_s γ_s θ_s,   θ_s = the consumer columns of unit s

(a LayerScale after the consumer is a fixed linear map of them; the consumer's bias is not gated). ``γ_s = 0`` is
exactly the removal of ``s``, and because ``θ`` is linear in ``γ`` the derivatives in gate space are exact
projections of the parameter-space ones: ``g_s = ∂L/∂γ_s = θ_sᵀ∇L`` and ``G_st = ∂²L/∂γ_s∂γ_t = θ_sᵀ H θ_t``.
Removing a set ``P`` changes the loss by ``δL(P) ≈ −Σ_{s∈P} g_s + ½ Σ_{s,t∈P} G_st``.

Two observers of the gradient engine (:func:`~hf_sparsify.observers.gradients.run_gradients`) collect what SOSP
needs, averaged over the calibration images and summed over the processes of ``accelerate launch``:

* :class:`GateCurvature` (SOSP-H): per batch the gate gradient ``g`` and one gate-space Hessian-vector product
  ``G·v`` (``v = 1``: every row sum ``(G·1)_s = θ_sᵀ H θ_S`` over all structures of all layers at once), by double
  backward (the exact Hessian) or as a Gauss–Newton-vector product ``Jᵀ Λ J v``;
* :class:`GateGaussNewton` (SOSP-I): per batch ``g`` and the ``S × S`` Gauss–Newton matrix
  ``Σ_n J_nᵀ Λ_n J_n`` in gate space (``J_n``: the Jacobian of image ``n``'s output in the gates, ``Λ_n``: the
  Hessian of its loss in that output), from one vector-Jacobian product per direction of a factor of ``Λ_n``,
  all images of a batch at once through per-image gates.

Example: the gate gradient and Hessian row sums of every MLP neuron and head of the bundled ViT.

```python
>>> from hf_sparsify.adapters import get_adapter
>>> from hf_sparsify.data import CalibrationData
>>> from hf_sparsify.observers.gates import GateCurvature, StructureGates
>>> from hf_sparsify.observers.gradients import run_gradients
>>> groups = get_adapter(model).structure_groups()
>>> batches = CalibrationData.from_source(calibration, model=model, image_processor=processor, batch_size=8, num_samples=16)
>>> with StructureGates(model, groups) as gates:
...     curvature = GateCurvature(gates)
...     run = run_gradients(model, batches, curvature, loss="labels")
>>> gates.num_structures, tuple(curvature.gradient.shape), tuple(curvature.hessian_vector.shape)
(784, (784,), (784,))
```
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import nn

from ..adapters import StructureGroup
from ..errors import HfSparsifyError
from ..utils import get_logger
from .gradients import GradientObserver, GradientStep, model_features

__all__ = [
    "CURVATURES",
    "GateCurvature",
    "GateGaussNewton",
    "GateError",
    "StructureGates",
    "gauss_newton_bytes",
    "gauss_newton_vector_product",
    "output_hessian_factor",
]

logger = get_logger(__name__)

#: how :class:`GateCurvature` multiplies by the gate-space Hessian
CURVATURES = ("exact", "gauss_newton")


class GateError(HfSparsifyError, RuntimeError):
    """Gates cannot be placed or their curvature cannot be computed (the message says what to change)."""


def _statistics_dtype(model: nn.Module) -> torch.dtype:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.promote_types(dtype, torch.float32)


def _math_attention():
    """A context running scaled-dot-product attention through its math kernel (differentiable twice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def gauss_newton_bytes(num_structures: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of an ``S × S`` gate-space Gauss–Newton matrix (18,504 structures of DeiT-S: 1.37 GB in float32)."""
    return num_structures * num_structures * (torch.finfo(dtype).bits // 8)


class StructureGates:
    """Gates ``γ = 1`` on the consumer inputs of structure groups (see the module docstring).

    Use as a context manager (or :meth:`attach` / :meth:`detach`); the hooks are removed on exit.

    Args:
        model: the model; its weights are not changed.
        groups: the structure groups to gate, in the order their structures are numbered (structure ``k`` of the
            flat vector is unit ``k − offset`` of the group whose range holds ``k``).
        per_sample: one gate per image and structure (created at every forward pass that records a graph, shape
            ``(batch, units)``): the gate gradient of image ``n`` is then ``u_nᵀ J_n`` for any output cotangent
            ``u``, which :class:`GateGaussNewton` needs. ``False``: one gate vector per group shared by every image
            (leaf tensors for the gradient engine).
        capture_outputs: keep the model's output tensor (logits, else the last hidden state) of the last forward pass
            that records a graph, as :attr:`outputs` (for Gauss–Newton products).
        second_derivatives: while attached, scaled-dot-product attention runs its math kernel, whose backward pass can
            be differentiated again (the fused kernels' cannot): needed by double backward (Hessian- and
            Gauss–Newton-vector products). Default: with shared gates.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[StructureGroup],
        *,
        per_sample: bool = False,
        capture_outputs: bool = False,
        second_derivatives: bool | None = None,
    ):
        self.model = model
        self.groups = list(groups)
        if not self.groups:
            raise GateError("StructureGates needs at least one structure group.")
        self.sizes = [g.num_units for g in self.groups]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.per_sample = per_sample
        self.capture_outputs = capture_outputs or per_sample
        self.dtype = _statistics_dtype(model)
        device = next(model.parameters()).device
        self.gates = [torch.ones(n, dtype=self.dtype, device=device) for n in self.sizes]
        self.sample_gates: dict[int, torch.Tensor] = {}
        self.outputs: torch.Tensor | None = None
        self.second_derivatives = not per_sample if second_derivatives is None else second_derivatives
        self._handles: list = []
        self._attention = None

    @property
    def num_structures(self) -> int:
        """``S``: the structures gated, over all groups."""
        return self.offsets[-1]

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector of ``S`` values (last dimension) cut into one piece per group."""
        return list(values.split(self.sizes, dim=-1))

    # ------------------------------------------------------------------------------------------ hooks
    def attach(self) -> "StructureGates":
        if self._handles:
            return self
        if self.second_derivatives:
            self._attention = _math_attention()
            self._attention.__enter__()
        self._handles.append(self.model.register_forward_pre_hook(self._start_pass))
        if self.capture_outputs:
            self._handles.append(self.model.register_forward_hook(self._capture))
        for index, group in enumerate(self.groups):
            for name in group.consumers:
                module = self.model.get_submodule(name)
                self._handles.append(module.register_forward_pre_hook(functools.partial(self._gate, index)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._attention is not None:
            self._attention.__exit__(None, None, None)
            self._attention = None
        self.sample_gates = {}
        self.outputs = None

    def __enter__(self) -> "StructureGates":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def leaves(self) -> list[torch.Tensor]:
        """The shared gate vectors (for ``GradientObserver.leaves``); none with per-image gates, which are created
        at each forward pass already requiring grad."""
        return [] if self.per_sample else list(self.gates)

    def batch_leaves(self) -> list[torch.Tensor]:
        """The gates of the last forward pass that recorded a graph, one per group: the shared vectors, or the
        per-image ``(batch, units)`` gates (a group whose consumer was not reached gets ``None``)."""
        if not self.per_sample:
            return list(self.gates)
        return [self.sample_gates.get(i) for i in range(len(self.groups))]

    def _start_pass(self, module, args, kwargs=None):
        if torch.is_grad_enabled():
            self.sample_gates = {}

    def _capture(self, module, args, output):
        if torch.is_grad_enabled():
            self.outputs = model_features(output)

    def _gate(self, index: int, module: nn.Module, args):
        if not torch.is_grad_enabled() or not args:
            return None  # a pass without a graph (the reference outputs of loss="kl"): γ = 1 changes nothing
        x = args[0]
        group = self.groups[index]
        width = self.sizes[index] * group.unit_size
        # a Linear consumer reads its input features last; a (1×1) convolution reads channels at dim 1 (N, C, H, W)
        channels_dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else x.dim() - 1
        if x.shape[channels_dim] != width:
            raise GateError(
                f"{group.consumers[0]} receives {x.shape[channels_dim]} input features but {group.name} has {self.sizes[index]} units of "
                f"{group.unit_size}: the structure groups no longer match the model (take them from get_adapter(model) again)."
            )
        # the gate's shape broadcast against x: units along channels_dim, ones elsewhere (the batch too when shared)
        shape = [1] * x.dim()
        shape[channels_dim] = width
        if self.per_sample:
            gate = self.sample_gates.get(index)
            if gate is None:
                gate = torch.ones(x.shape[0], self.sizes[index], dtype=self.dtype, device=x.device, requires_grad=True)
                self.sample_gates[index] = gate
            expanded = gate.repeat_interleave(group.unit_size, dim=-1) if group.unit_size > 1 else gate
            shape[0] = x.shape[0]
            expanded = expanded.reshape(shape)
        else:
            gate = self.gates[index]
            if not gate.requires_grad:
                return None
            expanded = (gate.repeat_interleave(group.unit_size) if group.unit_size > 1 else gate).reshape(shape)
        if x.dtype in (torch.float16, torch.bfloat16):  # the product and its gradient in float32, then back
            gated = (x.to(self.dtype) * expanded).to(x.dtype)
        else:
            gated = x * expanded.to(x.dtype)
        return (gated, *args[1:])


# ---------------------------------------------------------------------------------------------- curvature products
def _flat(values: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Concatenate per-group gradients (``None``: zeros shaped as in ``like``) over the last dimension."""
    return torch.cat([torch.zeros(t.shape, dtype=dtype, device=t.device) if v is None else v.to(dtype) for v, t in zip(values, like)], dim=-1)


def _output_hessian_product(loss: torch.Tensor, outputs: torch.Tensor, vector: torch.Tensor, *, first: torch.Tensor | None = None) -> torch.Tensor:
    """``Λ v``: the Hessian of ``loss`` in the model's outputs times ``v`` (same shape as the outputs), by double
    backward through the loss function only. ``first``: ``∂loss/∂outputs`` built with ``create_graph=True``."""
    if first is None:
        (first,) = torch.autograd.grad(loss, outputs, create_graph=True, retain_graph=True)
    (product,) = torch.autograd.grad((first * vector.to(first.dtype)).sum(), outputs, retain_graph=True, allow_unused=True)
    return torch.zeros_like(outputs) if product is None else product


def gauss_newton_vector_product(
    loss: torch.Tensor, outputs: torch.Tensor, leaves: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor], *, retain_graph: bool = True
) -> list[torch.Tensor | None]:
    """``Jᵀ Λ J v`` for leaves ``γ`` (``J = ∂outputs/∂γ``, ``Λ`` the Hessian of ``loss`` in ``outputs``): the
    Gauss–Newton matrix times ``v``, one vector per leaf. ``J v`` comes from the double vector-Jacobian trick
    (``J v = ∂(uᵀJ v)/∂u``), ``Λ (J v)`` from double backward through the loss function, ``Jᵀ(·)`` from one more
    vector-Jacobian product: three backward passes, no second derivative of the network."""
    leaves = list(leaves)
    probe = torch.zeros_like(outputs, requires_grad=True)
    transposed = torch.autograd.grad(outputs, leaves, grad_outputs=probe, create_graph=True, retain_graph=True, allow_unused=True)
    dot = sum((t * v.to(t.dtype)).sum() for t, v in zip(transposed, vectors) if t is not None)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
        return [None] * len(leaves)
    (jv,) = torch.autograd.grad(dot, probe)
    ljv = _output_hessian_product(loss, outputs, jv.detach())
    return list(torch.autograd.grad(outputs, leaves, grad_outputs=ljv.to(outputs.dtype), retain_graph=retain_graph, allow_unused=True))


def output_hessian_factor(
    loss: torch.Tensor,
    outputs: torch.Tensor,
    *,
    num_images: int,
    samples: int | None = None,
    generator: torch.Generator | None = None,
    max_exact: int = 64,
) -> torch.Tensor:
    """Directions ``U`` (``k × outputs.shape``) with ``Σ_i U_i[n] U_i[n]ᵀ = Λ_n`` for every image ``n`` (exactly, or
    in expectation with ``samples``): ``Λ_n`` is the Hessian of image ``n``'s loss in its output, where ``loss`` is
    the mean over the ``num_images`` images of the batch.

    * Outputs of one vector per image (logits): ``Λ_n`` is formed by ``C`` double-backward products through the loss function alone, then factored by its
      eigen-decomposition (eigenvalues clipped at 0): the ``rank`` directions ``√λ_i v_i`` give the exact
      Gauss–Newton matrix. With ``samples=k`` (or ``C > max_exact``), ``k`` Gaussian draws ``V diag(√λ) ξ / √k``
      give an unbiased estimate instead (for ImageNet's 1,000 classes).
    * Outputs of several vectors per image (a backbone's hidden states): ``Λ_n`` must be a multiple ``c·I`` of the
      identity — as for ``loss="kl"``, whose hidden-state loss is ``½‖f − f_ref‖²`` per image (checked with one
      product). With at most ``max_exact`` output entries per image and ``samples=None``, the ``√c`` unit vectors
      give the exact matrix; otherwise ``k = samples or 16`` Gaussian directions ``√c ξ / √k`` give an unbiased
      estimate.

    Raises:
        GateError: hidden-state outputs whose loss Hessian is not a multiple of the identity.
    """
    if outputs.dim() < 2 or outputs.shape[0] != num_images:
        raise GateError(f"the model's output has shape {tuple(outputs.shape)}: a Gauss–Newton matrix needs one output per image.")
    (first,) = torch.autograd.grad(loss, outputs, create_graph=True, retain_graph=True)
    dtype = torch.promote_types(outputs.dtype, torch.float32)
    if outputs.dim() == 2:
        classes = outputs.shape[1]
        rows = []
        for k in range(classes):
            basis = torch.zeros_like(outputs)
            basis[:, k] = 1
            rows.append(_output_hessian_product(loss, outputs, basis, first=first).to(dtype))
        lam = torch.stack(rows, dim=1) * num_images  # (B, C, C): Λ_n of each image
        lam = 0.5 * (lam + lam.transpose(1, 2))
        values, vectors = torch.linalg.eigh(lam)
        values = values.clamp_min(0)
        if samples is None and classes > max_exact:
            samples = 16
        if samples is None:
            keep = values.amax(0) > values.max() * torch.finfo(dtype).eps * classes
            factors = vectors * values.sqrt().unsqueeze(1)  # column i: √λ_i v_i
            return factors[:, :, keep].permute(2, 0, 1).contiguous()
        noise = torch.randn(samples, outputs.shape[0], classes, generator=generator, dtype=dtype).to(outputs.device)
        return torch.einsum("bci,kbi->kbc", vectors * values.sqrt().unsqueeze(1), noise) / samples**0.5
    probe = torch.randn(outputs.shape, generator=generator, dtype=dtype).to(outputs.device)
    product = _output_hessian_product(loss, outputs, probe, first=first).to(dtype) * num_images
    scale = float((product * probe).sum() / probe.square().sum())
    tolerance = max(1e-3, 8 * torch.finfo(outputs.dtype).eps)  # the product passes through the output's dtype
    if scale < 0 or not torch.allclose(product, scale * probe, rtol=tolerance, atol=tolerance * max(1e-3, abs(scale))):
        raise GateError(
            "SOSP-I's Gauss–Newton matrix on hidden-state outputs (a backbone without a head) needs a loss whose Hessian "
            "in those outputs is a multiple of the identity: use loss='kl' (½‖f − f_ref‖² per image), or SOSP-H."
        )
    per_image = outputs[0].numel()
    if samples is None and per_image <= max_exact:  # the exact factor √c·I, one direction per output entry
        basis = torch.eye(per_image, dtype=dtype, device=outputs.device).reshape(per_image, 1, *outputs.shape[1:])
        return basis.expand(per_image, *outputs.shape) * scale**0.5
    samples = samples or 16
    noise = torch.randn((samples, *outputs.shape), generator=generator, dtype=dtype).to(outputs.device)
    return noise * (scale / samples) ** 0.5


# ---------------------------------------------------------------------------------------------- observers
class _LossScale:
    """Loss scaling for float16 models (gradients and second derivatives underflow in float16): start at 2^10, halve
    while the products overflow. Powers of two, so unscaling is exact."""

    def __init__(self, enabled: bool):
        self.value = 2.0**10 if enabled else 1.0

    def run(self, compute: Callable[[float], list[torch.Tensor]]) -> list[torch.Tensor]:
        while True:
            values = compute(self.value)
            finite = all(bool(torch.isfinite(v).all()) for v in values)
            if finite or self.value <= 1.0:
                return [v / self.value for v in values]
            self.value /= 2


class GateCurvature(GradientObserver):
    """SOSP-H's statistics: the mean gate gradient ``g`` and gate-space Hessian-vector product ``G v`` over the
    calibration images (see the module docstring).

    Args:
        gates: shared :class:`StructureGates` (``per_sample=False``); with ``curvature="gauss_newton"`` they must
            capture the outputs (``capture_outputs=True``).
        curvature: ``"exact"`` (double backward: the full Hessian, ``∂(gᵀv)/∂γ``) or ``"gauss_newton"``
            (``JᵀΛJ v``, three backward passes).
        vector: ``v`` (``S`` values); default all ones, which gives every row sum ``(G·1)_s``.

    After the pass: :attr:`gradient` and :attr:`hessian_vector` (float64, ``S`` values, averaged over images and
    processes) and :attr:`num_images`.
    """

    def __init__(self, gates: StructureGates, curvature: str = "exact", vector: torch.Tensor | None = None):
        if curvature not in CURVATURES:
            raise GateError(f"curvature={curvature!r} is not one of {list(CURVATURES)}.")
        if gates.per_sample:
            raise GateError("GateCurvature takes shared gates (StructureGates(..., per_sample=False)).")
        if curvature == "gauss_newton" and not gates.capture_outputs:
            raise GateError("curvature='gauss_newton' needs the model's outputs: StructureGates(..., capture_outputs=True).")
        self.gates, self.curvature = gates, curvature
        device = gates.gates[0].device
        vector = torch.ones(gates.num_structures, dtype=gates.dtype, device=device) if vector is None else vector.to(device=device, dtype=gates.dtype)
        self.vectors = gates.split(vector)
        self._gradient = torch.zeros(gates.num_structures, dtype=torch.float64, device=device)
        self._product = torch.zeros_like(self._gradient)
        self._images = torch.zeros((), dtype=torch.float64, device=device)
        self._scale: _LossScale | None = None
        self.gradient: torch.Tensor | None = None
        self.hessian_vector: torch.Tensor | None = None
        self.num_images = 0

    def leaves(self) -> list[torch.Tensor]:
        return self.gates.leaves()

    def observe(self, step: GradientStep) -> None:
        leaves = self.gates.leaves()
        if self._scale is None:
            self._scale = _LossScale(any(p.dtype == torch.float16 for p in self.gates.model.parameters()))

        def compute(scale: float) -> list[torch.Tensor]:
            loss = step.loss * scale if scale != 1.0 else step.loss
            exact = self.curvature == "exact"
            grads = torch.autograd.grad(loss, leaves, create_graph=exact, retain_graph=True, allow_unused=True)
            if exact:
                dot = sum((g * v).sum() for g, v in zip(grads, self.vectors) if g is not None)
                products = torch.autograd.grad(dot, leaves, retain_graph=True, allow_unused=True) if torch.is_tensor(dot) and dot.requires_grad else [None] * len(leaves)
            else:
                products = gauss_newton_vector_product(loss, self.gates.outputs, leaves, self.vectors)
            return [_flat([g.detach() if g is not None else None for g in grads], leaves), _flat(products, leaves)]

        with step.timer("curvature"):
            gradient, product = self._scale.run(compute)
        self._gradient += step.num_images * gradient
        self._product += step.num_images * product
        self._images += step.num_images

    def reduce(self, all_reduce) -> None:
        all_reduce(self._gradient)
        all_reduce(self._product)
        all_reduce(self._images)
        count = float(self._images)
        self.num_images = int(round(count))
        self.gradient = self._gradient / count if count else self._gradient
        self.hessian_vector = self._product / count if count else self._product


class GateGaussNewton(GradientObserver):
    """SOSP-I's statistics: the mean gate gradient ``g`` and the gate-space Gauss–Newton matrix
    ``G = (1/N) Σ_n J_nᵀ Λ_n J_n`` over the calibration images (see the module docstring).

    Each batch takes one backward pass for ``g`` and vector-Jacobian products along every direction of
    :func:`output_hessian_factor` (the rank of ``Λ_n``: 9 for 10 classes; ``samples`` for many classes or
    hidden-state outputs), ``chunk`` directions per vectorised backward pass, each giving the rows ``u_nᵀ J_n`` of
    every image at once through per-image gates; ``G += RᵀR``.

    Args:
        gates: :class:`StructureGates` with ``per_sample=True``.
        samples: Monte Carlo directions per image instead of the exact factor (see :func:`output_hessian_factor`).
        seed: seed of those directions (drawn per batch index, so any number of processes draws the same).
        exact_limit: outputs of at most this many entries per image get the exact factor when ``samples`` is
            ``None`` (``max_exact`` of :func:`output_hessian_factor`).
        chunk: directions differentiated together in one vectorised backward pass (memory: ``chunk`` times the
            activation gradients of a batch).

    After the pass: :attr:`gradient` (``S``, float64) and :attr:`gauss_newton` (``S × S``, the gates' dtype:
    float32, or float64 for a float64 model), averaged over images and processes.
    """

    def __init__(self, gates: StructureGates, *, samples: int | None = None, seed: int = 0, exact_limit: int = 64, chunk: int = 16):
        if not gates.per_sample:
            raise GateError("GateGaussNewton takes per-image gates (StructureGates(..., per_sample=True)).")
        self.gates, self.samples, self.seed, self.exact_limit = gates, samples, seed, exact_limit
        device = gates.gates[0].device
        size = gates.num_structures
        self._gradient = torch.zeros(size, dtype=torch.float64, device=device)
        self._matrix = torch.zeros(size, size, dtype=gates.dtype, device=device)
        self._images = torch.zeros((), dtype=torch.float64, device=device)
        self.gradient: torch.Tensor | None = None
        self.gauss_newton: torch.Tensor | None = None
        self.num_images = 0
        self.directions = 0
        self.chunk = chunk
        self._batched = True

    def _rows(self, outputs: torch.Tensor, leaves: list[torch.Tensor], block: torch.Tensor) -> Sequence[torch.Tensor | None]:
        """``u_nᵀ J_n`` of every image for each direction of ``block`` (``c × outputs.shape``): one vectorised
        backward pass (``is_grads_batched``), or one per direction where vectorisation is unavailable."""
        if self._batched:
            try:
                return torch.autograd.grad(outputs, leaves, grad_outputs=block, retain_graph=True, allow_unused=True, is_grads_batched=True)
            except RuntimeError as err:  # an op without a batching rule, or too little memory for the block
                logger.info(f"hf_sparsify: vectorised vector-Jacobian products unavailable ({str(err).splitlines()[0]}); one backward pass per direction.")
                self._batched = False
        per_direction = [torch.autograd.grad(outputs, leaves, grad_outputs=u, retain_graph=True, allow_unused=True) for u in block]
        return [None if parts[0] is None else torch.stack(parts) for parts in zip(*per_direction)]

    def observe(self, step: GradientStep) -> None:
        leaves = self.gates.batch_leaves()
        present = [t for t in leaves if t is not None]
        outputs = self.gates.outputs
        if outputs is None or not present:
            raise GateError("no gated forward pass was recorded for this batch (the gates are not attached to the model).")
        like = [t if t is not None else torch.zeros(outputs.shape[0], n, dtype=self.gates.dtype, device=outputs.device) for t, n in zip(leaves, self.gates.sizes)]
        with step.timer("curvature"):
            grads = torch.autograd.grad(step.loss, present, retain_graph=True, allow_unused=True)
            grads = iter(grads)
            full = [next(grads) if t is not None else None for t in leaves]
            self._gradient += step.num_images * _flat(full, like).sum(0)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step.index)
            factor = output_hessian_factor(step.loss, outputs, num_images=step.num_images, samples=self.samples, generator=generator, max_exact=self.exact_limit)
            self.directions = max(self.directions, factor.shape[0])
            for start in range(0, factor.shape[0], self.chunk):
                block = factor[start : start + self.chunk].to(outputs.dtype)
                rows = self._rows(outputs, present, block)
                rows = iter(rows)
                columns = [next(rows) if t is not None else None for t in leaves]
                like_block = [c if c is not None else torch.zeros(block.shape[0], *t.shape, dtype=t.dtype, device=t.device) for c, t in zip(columns, like)]
                matrix = _flat(columns, like_block, self._matrix.dtype).reshape(-1, self.gates.num_structures)
                self._matrix.addmm_(matrix.T, matrix)
        self._images += step.num_images

    def reduce(self, all_reduce) -> None:
        all_reduce(self._gradient)
        all_reduce(self._matrix)
        all_reduce(self._images)
        count = float(self._images)
        self.num_images = int(round(count))
        self.gradient = self._gradient / count if count else self._gradient
        self.gauss_newton = self._matrix.div_(count) if count else self._matrix
