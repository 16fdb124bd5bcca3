"""SOSP's saliency functions against slow loops, and the loss-change prediction on a model whose loss is exactly
quadratic in the gates."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_sparsify.adapters import get_adapter
from hf_sparsify.methods.sosp.saliency import SALIENCY_FORMS, predicted_loss_change, sosp_h_saliency, sosp_i_saliency
from hf_sparsify.observers.gates import GateCurvature, GateGaussNewton, StructureGates
from hf_sparsify.observers.gradients import run_gradients
from tests.conftest import make_tiny_model
from tests.methods.sosp.helpers import float64_batches


def _random(size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return torch.randn(size, generator=generator, dtype=torch.float64), a + a.T


def test_saliencies_equal_their_definitions():
    g, G = _random(7)
    for s in range(7):
        row = sum(G[s, t] for t in range(7))
        assert sosp_h_saliency(g, G.sum(1), form="sum_of_abs")[s] == pytest.approx(abs(g[s]) + 0.5 * abs(row))
        assert sosp_h_saliency(g, G.sum(1), form="abs_of_sum")[s] == pytest.approx(abs(-g[s] + 0.5 * row))
        assert sosp_h_saliency(g, G.sum(1), form="abs_of_sum", first_order=False)[s] == pytest.approx(0.5 * abs(row))
        assert sosp_i_saliency(g, G)[s] == pytest.approx(abs(g[s]) + 0.5 * sum(abs(G[s, t]) for t in range(7)))
        assert sosp_i_saliency(g, G, first_order=False)[s] == pytest.approx(0.5 * sum(abs(G[s, t]) for t in range(7)))
    torch.testing.assert_close(sosp_i_saliency(g, G, chunk=2), sosp_i_saliency(g, G), rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="form"):
        sosp_h_saliency(g, G.sum(1), form="bad")
    assert set(SALIENCY_FORMS) == {"sum_of_abs", "abs_of_sum"}


def test_predicted_loss_change_equals_its_definition():
    g, G = _random(6, seed=1)
    for members in itertools.combinations(range(6), 3):
        mask = torch.zeros(6, dtype=torch.bool)
        mask[list(members)] = True
        expected = -sum(g[s] for s in members) + 0.5 * sum(G[s, t] for s in members for t in members)
        assert float(predicted_loss_change(g, G, mask)) == pytest.approx(float(expected), rel=1e-12)
    # removing everything: the signed SOSP-H saliencies add up to δL(all)
    everything = torch.ones(6, dtype=torch.bool)
    assert float(predicted_loss_change(g, G, everything)) == pytest.approx(float((-g + 0.5 * G.sum(1)).sum()), rel=1e-12)


def quadratic_case():
    """A float64 ViT backbone without its final LayerNorm, gated on its last MLP only: the output is linear in those
    gates, and the loss ½‖f − c‖² per image is exactly quadratic in them."""
    model = make_tiny_model("vit", backbone=True, hidden_size=8, num_attention_heads=2, intermediate_size=16, image_size=8).double()
    model.layernorm = nn.Identity()
    groups = [g for g in get_adapter(model).structure_groups() if g.name.endswith("layers.1.mlp")]
    target = 0.3

    def loss(model, batch):
        features = model(pixel_values=batch["pixel_values"]).last_hidden_state
        return 0.5 * (features - target).square().sum() / features.shape[0]

    return model, groups, loss, float64_batches(model, num_batches=2, batch=3, labels=False)


def _true_change(model, groups, loss, batches, removed: torch.Tensor) -> float:
    consumer = model.get_submodule(groups[0].consumers[0])
    with torch.no_grad():
        before = sum(float(loss(model, b)) for b in batches) / len(batches)
        saved = consumer.weight.clone()
        consumer.weight[:, removed] = 0
        after = sum(float(loss(model, b)) for b in batches) / len(batches)
        consumer.weight.copy_(saved)
    return after - before


def test_prediction_is_exact_when_the_loss_is_quadratic_in_the_gates():
    model, groups, loss, batches = quadratic_case()
    with StructureGates(model, groups, per_sample=True) as gates:
        pairs = GateGaussNewton(gates)  # hidden states of 5 × 8 entries: the exact factor
        run_gradients(model, batches, pairs, loss=loss)
    with sdpa_kernel([SDPBackend.MATH]), StructureGates(model, groups) as gates:
        rows = GateCurvature(gates)
        run_gradients(model, batches, rows, loss=loss)
    # here the Gauss–Newton matrix is the Hessian: SOSP-I's matrix and SOSP-H's product agree
    torch.testing.assert_close(pairs.gauss_newton.sum(1), rows.hessian_vector, rtol=1e-9, atol=1e-12)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        removed = torch.randperm(16, generator=generator)[:6]
        mask = torch.zeros(16, dtype=torch.bool)
        mask[removed] = True
        predicted = float(predicted_loss_change(pairs.gradient, pairs.gauss_newton, mask))
        assert predicted == pytest.approx(_true_change(model, groups, loss, batches, removed), rel=1e-9, abs=1e-13)
    # SOSP-H: the signed saliencies add up to the change when every structure goes
    everything = torch.arange(16)
    total = float((-rows.gradient + 0.5 * rows.hessian_vector).sum())
    assert total == pytest.approx(_true_change(model, groups, loss, batches, everything), rel=1e-9)
