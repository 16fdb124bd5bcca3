"""The masked-gradient Fisher observer: block layout and divisor rule, sums equal to explicit per-gradient
outer products (any chunking), the label-free features loss, and clear errors."""

import pytest
import torch
from torch import nn

from hf_sparsify.adapters import get_adapter
from hf_sparsify.observers.fisher import (
    STORE_FRACTION_FOR_BUFFER,
    BlockLayout,
    FisherObserver,
    FisherTarget,
    GradientError,
    buffer_dtype,
    collect_fisher,
    fisher_chunk_size,
    resolve_block_size,
)
from hf_sparsify.observers.gradients import run_gradients
from tests.conftest import make_tiny_model, tiny_batches


# ------------------------------------------------------------------------------------------ divisor rule
@pytest.mark.parametrize(
    "numel, requested, multiple, expected",
    [(2304, 48, 1, 48), (2304, 50, 1, 64), (9216, 192, 1, 192), (1000, 192, 1, 200), (13, 5, 1, 13), (1024, 10, 4, 16), (1024, 1, 1, 1), (4096, 192, 1, 256)],
)
def test_smallest_divisor_at_least_the_requested_size(numel, requested, multiple, expected):
    assert resolve_block_size(numel, requested, multiple_of=multiple) == expected


def test_block_larger_than_the_layer_names_it():
    with pytest.raises(ValueError, match=r"fisher_block_size=192 is larger than layer stem.fc \(100 weights\)"):
        resolve_block_size(100, 192, name="stem.fc")


def test_layout_round_trips_and_nm_order_makes_input_channel_groups_contiguous():
    conv = torch.arange(4 * 8 * 2 * 2, dtype=torch.float32).reshape(4, 8, 2, 2)
    plain = BlockLayout.for_weight(conv, 16)
    assert plain.block_size == 16 and torch.equal(plain.to_blocks(conv).reshape(-1), conv.reshape(-1))
    nm = BlockLayout.for_weight(conv, 16, multiple_of=4)
    blocks = nm.to_blocks(conv)
    assert nm.nm_order and torch.equal(blocks[0, :8], conv[0, :, 0, 0])  # input channels at one kernel position
    assert torch.equal(nm.from_blocks(blocks), conv) and torch.equal(plain.from_blocks(plain.to_blocks(conv)), conv)
    linear = torch.randn(6, 10)
    assert not BlockLayout.for_weight(linear, 4, multiple_of=2).nm_order


# ------------------------------------------------------------------------------------------ sums
def _targets(model, block=16, picks=((0, "mlp.fc1"), (1, "attention.query"))):
    layers = [l for l in get_adapter(model).prunable_layers() if (l.block_index, l.role) in picks]
    assert len(layers) == len(picks)
    return [FisherTarget(l.name, l.weight, BlockLayout.for_weight(l.weight, block)) for l in layers]


def _explicit(model, targets, batches, loss, mode):
    sums = {}
    for index, batch in enumerate(batches):
        model.zero_grad()
        loss(model, batch, index).backward()
        for t in targets:
            g = t.layout.to_blocks(t.weight.grad * (t.weight != 0)).double()
            outer = torch.einsum("nb,nc->nbc", g, g) if mode == "blocks" else g.T @ g
            sums[t.name] = sums.get(t.name, 0) + outer
    model.zero_grad()
    return sums


@pytest.mark.parametrize("mode", ["blocks", "shared"])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_sums_equal_explicit_outer_products_of_masked_gradients(mode, chunk_size):
    model = make_tiny_model("vit")
    targets = _targets(model)
    with torch.no_grad():
        targets[0].weight[:, :5] = 0  # some pruned weights: their gradients are masked
    batches = tiny_batches(model, num_batches=5)
    stats = collect_fisher(model, targets, batches, mode=mode, chunk_size=chunk_size, dtype=torch.float64)
    assert stats.num_grads == 5
    expected = _explicit(model, targets, batches, lambda m, b, i: m(**b).loss, mode)
    for t in targets:
        torch.testing.assert_close(stats.sums[t.name], expected[t.name], rtol=1e-5, atol=1e-12)
    blocks = stats.sums[targets[0].name]
    if mode == "blocks":
        first_row = blocks[: 64 // 16]  # fc1 rows hold 32 inputs: blocks 0, 2, ... start each row
        assert (first_row[0, :5] == 0).all() and (first_row[0, :, :5] == 0).all()


def test_requires_grad_flags_and_weights_are_restored():
    model = make_tiny_model("deit")
    model.deit.embeddings.cls_token.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    collect_fisher(model, _targets(model), tiny_batches(model, 2))
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------ losses
def test_features_loss_on_a_backbone_without_labels_is_reproducible():
    model = make_tiny_model("dinov2", backbone=True)
    targets = _targets(model)
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model, 4)]
    first = collect_fisher(model, targets, batches, loss="features", seed=3, dtype=torch.float64)
    again = collect_fisher(model, targets, batches, loss="features", seed=3, chunk_size=1, dtype=torch.float64)
    other = collect_fisher(model, targets, batches, loss="features", seed=4, dtype=torch.float64)
    for t in targets:
        torch.testing.assert_close(first.sums[t.name], again.sums[t.name], rtol=1e-10, atol=0)
        assert not torch.allclose(first.sums[t.name], other.sums[t.name])
        assert torch.isfinite(first.sums[t.name]).all() and first.sums[t.name].abs().sum() > 0


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3, bias=False)

    def forward(self, pixel_values):
        return self.proj(pixel_values.flatten(1))


def test_features_fisher_estimates_the_gauss_newton_matrix():
    # for f = W x, the Gauss–Newton matrix of ½‖f − f₀‖²/b² over a batch is (1/b²) Σ_x (I ⊗ x xᵀ)
    torch.manual_seed(0)
    model = _Linear()
    x = torch.randn(2, 4)
    target = FisherTarget("proj", model.proj.weight, BlockLayout.for_weight(model.proj.weight, 12))
    draws = 4000
    stats = collect_fisher(model, [target], [{"pixel_values": x.view(2, 1, 2, 2)}] * draws, loss="features", dtype=torch.float64)
    estimate = stats.sums["proj"][0] / stats.num_grads
    gauss_newton = torch.kron(torch.eye(3), (x.T @ x).double()) / 4
    assert torch.linalg.matrix_norm(estimate - gauss_newton) / torch.linalg.matrix_norm(gauss_newton) < 0.08


def test_custom_loss_function():
    model = make_tiny_model("convnext")
    layer = get_adapter(model).prunable_layers()[0]
    target = FisherTarget(layer.name, layer.weight, BlockLayout.for_weight(layer.weight, 8))
    batches = tiny_batches(model, 3)
    loss = lambda m, b: m(pixel_values=b["pixel_values"]).logits.square().mean()  # noqa: E731
    stats = collect_fisher(model, [target], batches, loss=loss, dtype=torch.float64)
    expected = _explicit(model, [target], batches, lambda m, b, i: loss(m, b), "blocks")
    torch.testing.assert_close(stats.sums[layer.name], expected[layer.name], rtol=1e-5, atol=1e-12)


def test_labels_loss_on_a_backbone_names_the_options():
    model = make_tiny_model("dinov2", backbone=True)
    with pytest.raises(GradientError, match=r"Dinov2Model (takes no labels|returned no loss).*loss='features'.*callable"):
        collect_fisher(model, _targets(model), tiny_batches(model, 1), loss="labels")


def test_labels_loss_without_labels_names_the_options():
    model = make_tiny_model("vit")
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model, 1)]
    with pytest.raises(GradientError, match=r"needs calibration batches with 'labels'.*loss='features'"):
        collect_fisher(model, _targets(model), batches, loss="labels")


def test_non_finite_gradients_name_the_layer():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, 2)
    batches[1]["pixel_values"][0, 0, 0, 0] = float("inf")
    with pytest.raises(GradientError, match=r"Non-finite gradients for layer vit\.layers\.0\.mlp\.fc1"):
        collect_fisher(model, _targets(model), batches)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_accumulate_in_float64(dtype):
    model = make_tiny_model("vit").to(dtype)
    targets = _targets(model)
    batches = tiny_batches(model, num_batches=3)
    with torch.no_grad():
        stats = collect_fisher(model, targets, batches)
    assert stats.num_grads == 3 and stats.num_images == 12
    reference = make_tiny_model("vit").to(dtype).double()  # the same rounded weights, exact gradients
    expected = _explicit(reference, _targets(reference), [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in batches], lambda m, b, i: m(**b).loss, "blocks")
    for t, r in zip(targets, _targets(reference)):
        assert stats.sums[t.name].dtype == torch.float64
        error = (stats.sums[t.name] - expected[r.name]).norm() / expected[r.name].norm()
        assert error < (5e-3 if dtype == torch.float16 else 5e-2)  # the rounding of the half-precision backward


def test_the_gradient_buffer_grows_with_the_store_of_large_models():
    # issue 17.3: at DeiT-tiny size (5.3M weights, B = 192, float64 sums) the 256 MiB workspace alone holds 6
    # float64 gradients, and every product then reads and writes the whole 7.6 GiB store for 6 gradients; 8% of
    # the store holds 30 gradients buffered in float32 (the gradients of a float32 model)
    weight = nn.Parameter(torch.zeros(1))
    targets = [FisherTarget(f"layer{i}", weight, BlockLayout((768, 576), 192)) for i in range(12)]  # 5,308,416 weights
    assert buffer_dtype(targets, torch.float64) == torch.float32
    blocks = fisher_chunk_size(targets, torch.float64, "cpu", "blocks", torch.float32)
    assert blocks == int(STORE_FRACTION_FOR_BUFFER * 192 * 2) == 30
    assert fisher_chunk_size(targets, torch.float64, "cpu", "shared", torch.float32) == 12  # one B×B per layer: the workspace rule
    small = [FisherTarget("fc1", weight, BlockLayout((192, 48), 48))]
    assert fisher_chunk_size(small, torch.float64, "cpu", "blocks") == 64
    # a float64 model's gradients are buffered in float64 (no rounding)
    assert buffer_dtype([FisherTarget("fc1", nn.Parameter(torch.zeros(1, dtype=torch.float64)), small[0].layout)], torch.float64) == torch.float64


def test_float32_buffers_give_the_sums_of_float64_buffers():
    model = make_tiny_model("vit")
    layers = get_adapter(model).prunable_layers()[:3]
    targets = [FisherTarget(l.name, l.weight, BlockLayout.for_weight(l.weight, 16)) for l in layers]
    batches = tiny_batches(model, num_batches=5, batch=2)
    stats = collect_fisher(model, targets, batches, chunk_size=2)
    reference = FisherObserver(targets, chunk_size=2)
    reference.buffer_dtype = torch.float64
    reference._buffers = {k: v.double() for k, v in reference._buffers.items()}
    run_gradients(model, batches, reference)
    for t in targets:
        assert torch.equal(stats.sums[t.name], reference.sums[t.name])
