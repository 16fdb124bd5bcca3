"""Structure gates and SOSP's gate-space curvature observers against slow exact oracles (float64 tiny models).

The oracle scales the consumer columns of every structure by ``γ`` in a functional call (``θ(γ) = θ_rest +
Σ γ_s θ_s``, no hooks) and differentiates that with ``torch.autograd.functional``: the full gate-space Hessian, the
Jacobian of the outputs, and the explicit Gauss–Newton matrix ``Σ_n J_nᵀ Λ_n J_n``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_sparsify.adapters import get_adapter
from hf_sparsify.observers.gates import GateCurvature, GateError, GateGaussNewton, StructureGates, gauss_newton_bytes, output_hessian_factor
from hf_sparsify.observers.gradients import run_gradients
from tests.conftest import make_tiny_model, tiny_batches

FAMILIES = ["vit", "dinov2_swiglu", "convnextv2"]


def _case(family: str, *, backbone: bool = False, num_batches: int = 2, **overrides):
    model = make_tiny_model(family, backbone=backbone, **overrides).double()
    groups = get_adapter(model).structure_groups()
    batches = tiny_batches(model, num_batches=num_batches, batch=3)
    for b in batches:
        b["pixel_values"] = b["pixel_values"].double()
        if backbone:
            del b["labels"]
    return model, groups, batches


def _gated_parameters(model, groups, gamma: torch.Tensor) -> dict[str, torch.Tensor]:
    """The consumer weights with every unit's columns scaled by its gate (the oracle's θ(γ))."""
    params, start = {}, 0
    for group in groups:
        gate = gamma[start : start + group.num_units].repeat_interleave(group.unit_size)
        for name in group.consumers:
            weight = model.get_submodule(name).weight
            params[f"{name}.weight"] = weight * gate.reshape(1, -1)
        start += group.num_units
    return params


def _outputs(model, groups, gamma, batch):
    out = torch.func.functional_call(model, _gated_parameters(model, groups, gamma), (), {"pixel_values": batch["pixel_values"]})
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _size(groups) -> int:
    return sum(g.num_units for g in groups)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_and_hessian_row_sums_equal_the_full_autograd_hessian(family):
    model, groups, batches = _case(family)
    ones = torch.ones(_size(groups), dtype=torch.float64)
    with sdpa_kernel([SDPBackend.MATH]):
        with StructureGates(model, groups) as gates:
            observer = GateCurvature(gates)
            run_gradients(model, batches, observer, loss="labels")
        gradients, hessians = [], []
        for batch in batches:

            def loss(gamma, batch=batch):
                logits = _outputs(model, groups, gamma, batch)
                return nn.functional.cross_entropy(logits, batch["labels"])

            gradients.append(torch.autograd.functional.jacobian(loss, ones))
            hessians.append(torch.autograd.functional.hessian(loss, ones))
    gradient, hessian = torch.stack(gradients).mean(0), torch.stack(hessians).mean(0)
    assert observer.num_images == 6
    torch.testing.assert_close(observer.gradient, gradient, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(observer.hessian_vector, hessian.sum(1), rtol=1e-8, atol=1e-14)
    assert hessian.sum(1).abs().max() > 1e-5 and gradient.abs().max() > 1e-5  # a real test: neither is zero


def _explicit_gauss_newton(model, groups, batches, lam):
    """``(1/N) Σ_n J_nᵀ Λ_n J_n`` with ``J_n`` from the Jacobian of the functional model's outputs."""
    size = _size(groups)
    ones = torch.ones(size, dtype=torch.float64)
    total, count = torch.zeros(size, size, dtype=torch.float64), 0
    for batch in batches:
        outputs = _outputs(model, groups, ones, batch).detach()
        jacobian = torch.autograd.functional.jacobian(lambda gamma: _outputs(model, groups, gamma, batch), ones)
        jacobian = jacobian.reshape(outputs.shape[0], -1, size)  # (B, outputs per image, S)
        for n in range(outputs.shape[0]):
            total += jacobian[n].T @ lam(outputs[n]) @ jacobian[n]
        count += outputs.shape[0]
    return total / count


def _softmax_hessian(logits):
    p = logits.softmax(-1)
    return torch.diag(p) - torch.outer(p, p)


@pytest.mark.parametrize("loss", ["labels", "kl"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gauss_newton_matrix_equals_the_explicit_product(family, loss):
    model, groups, batches = _case(family)
    with StructureGates(model, groups, per_sample=True) as gates:
        observer = GateGaussNewton(gates)
        run_gradients(model, batches, observer, loss=loss)
    expected = _explicit_gauss_newton(model, groups, batches, _softmax_hessian)
    assert observer.gauss_newton.dtype == torch.float64 and observer.directions == 4  # 5 classes: rank 4
    torch.testing.assert_close(observer.gauss_newton, expected, rtol=1e-8, atol=1e-12)
    # the gate gradient of the per-image gates summed over images is the shared gate gradient
    with StructureGates(model, groups) as gates:
        shared = GateCurvature(gates)
        with sdpa_kernel([SDPBackend.MATH]):
            run_gradients(model, batches, shared, loss=loss)
    torch.testing.assert_close(observer.gradient, shared.gradient, rtol=1e-8, atol=1e-12)


def test_gauss_newton_vector_product_equals_the_explicit_matrix_times_one():
    model, groups, batches = _case("vit")
    with sdpa_kernel([SDPBackend.MATH]), StructureGates(model, groups, capture_outputs=True) as gates:
        observer = GateCurvature(gates, curvature="gauss_newton")
        run_gradients(model, batches, observer, loss="labels")
    expected = _explicit_gauss_newton(model, groups, batches, _softmax_hessian)
    torch.testing.assert_close(observer.hessian_vector, expected.sum(1), rtol=1e-8, atol=1e-12)


def test_exact_hessian_of_the_kl_loss_is_its_gauss_newton_matrix():
    # KL to the model's own outputs: zero residual at the start, so the Hessian is exactly JᵀΛJ and g = 0
    model, groups, batches = _case("dinov2")
    with sdpa_kernel([SDPBackend.MATH]):
        with StructureGates(model, groups) as gates:
            exact = GateCurvature(gates)
            run_gradients(model, batches, exact, loss="kl")
        with StructureGates(model, groups, capture_outputs=True) as gates:
            gauss_newton = GateCurvature(gates, curvature="gauss_newton")
            run_gradients(model, batches, gauss_newton, loss="kl")
    torch.testing.assert_close(exact.hessian_vector, gauss_newton.hessian_vector, rtol=1e-8, atol=1e-12)
    assert exact.gradient.abs().max() < 1e-12


def test_hidden_state_outputs_exact_and_sampled():
    # a backbone: loss="kl" is ½‖f − f_ref‖² per image, Λ = I; small outputs get the exact unit-vector factor
    model, groups, batches = _case("vit", backbone=True, hidden_size=8, num_attention_heads=2, intermediate_size=16, image_size=8)
    expected = _explicit_gauss_newton(model, groups, batches, lambda out: torch.eye(out.numel(), dtype=torch.float64))
    with StructureGates(model, groups, per_sample=True) as gates:
        exact = GateGaussNewton(gates)
        run_gradients(model, batches, exact, loss="kl")
    assert exact.directions == 5 * 8  # tokens × hidden
    torch.testing.assert_close(exact.gauss_newton, expected, rtol=1e-8, atol=1e-12)
    # Gaussian directions: an unbiased estimate
    with StructureGates(model, groups, per_sample=True) as gates:
        sampled = GateGaussNewton(gates, samples=400, seed=1)
        run_gradients(model, batches, sampled, loss="kl")
    error = (sampled.gauss_newton - expected).norm() / expected.norm()
    assert error < 0.15


def test_hidden_state_loss_without_an_identity_hessian_is_refused():
    model, groups, batches = _case("vit", backbone=True)

    def quartic(model, batch):
        return model(pixel_values=batch["pixel_values"]).last_hidden_state.pow(4).mean()

    with StructureGates(model, groups, per_sample=True) as gates, pytest.raises(GateError, match="loss='kl'"):
        run_gradients(model, batches, GateGaussNewton(gates), loss=quartic)


def test_output_hessian_factor_samples_are_unbiased():
    logits = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 4]))
    exact = output_hessian_factor(loss, logits, num_images=2)
    lam = torch.stack([_softmax_hessian(logits[n].detach()) for n in range(2)])
    torch.testing.assert_close(torch.einsum("kbc,kbd->bcd", exact, exact), lam, rtol=1e-10, atol=1e-12)
    sampled = output_hessian_factor(loss, logits, num_images=2, samples=20_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.einsum("kbc,kbd->bcd", sampled, sampled), lam, rtol=0, atol=0.01)


def test_gates_leave_the_model_unchanged_and_are_removed():
    model, groups, batches = _case("deit")
    with torch.no_grad():
        before = model(pixel_values=batches[0]["pixel_values"]).logits
    with StructureGates(model, groups) as gates:
        for gate in gates.leaves():
            gate.requires_grad_(True)
        after = model(pixel_values=batches[0]["pixel_values"]).logits
        for gate in gates.leaves():
            gate.requires_grad_(False)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-14)  # γ = 1 (attention's math kernel: last bits)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_groups_out_of_sync_with_the_model_are_named():
    model, groups, batches = _case("vit")
    stale = [groups[1]]
    stale[0].num_units -= 1
    with StructureGates(model, stale) as gates:
        gates.gates[0].requires_grad_(True)
        with pytest.raises(GateError, match="no longer match"):
            model(pixel_values=batches[0]["pixel_values"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_models_give_finite_float32_statistics(dtype):
    model = make_tiny_model("vit").to(dtype)
    groups = get_adapter(model).structure_groups()
    batches = tiny_batches(model, num_batches=2, batch=3)
    with sdpa_kernel([SDPBackend.MATH]), StructureGates(model, groups) as gates:
        observer = GateCurvature(gates)
        run_gradients(model, batches, observer, loss="labels")
    reference_model = make_tiny_model("vit")
    with sdpa_kernel([SDPBackend.MATH]), StructureGates(reference_model, groups) as gates:
        reference = GateCurvature(gates)
        run_gradients(reference_model, batches, reference, loss="labels")
    assert gates.dtype == torch.float32
    assert torch.isfinite(observer.gradient).all() and torch.isfinite(observer.hessian_vector).all()
    # the half-precision statistics follow the float32 ones
    assert torch.corrcoef(torch.stack([observer.hessian_vector, reference.hessian_vector]))[0, 1] > 0.9


def test_gauss_newton_bytes():
    assert gauss_newton_bytes(18_504) == 18_504**2 * 4  # DeiT-S: 1.37 GB in float32
    assert gauss_newton_bytes(10, torch.float64) == 800


@pytest.mark.parametrize("family", ["deit", "convnext"])
def test_vectorised_and_per_direction_products_agree(family):
    model, groups, batches = _case(family)
    matrices = []
    for batched in (True, False):
        with StructureGates(model, groups, per_sample=True) as gates:
            observer = GateGaussNewton(gates, chunk=3)
            observer._batched = batched
            run_gradients(model, batches, observer, loss="labels")
        assert observer._batched == batched  # the vectorised path ran without falling back
        matrices.append(observer.gauss_newton)
    torch.testing.assert_close(matrices[0], matrices[1], rtol=1e-12, atol=1e-15)
