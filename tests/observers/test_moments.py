import math

import pytest
import torch

from hf_sparsify.adapters import CONV_CHANNEL, MLP_NEURON, get_adapter
from hf_sparsify.observers import Moments, NonFiniteActivationError, batch_moments, collect_activation_moments, merge_moments
from tests.conftest import make_tiny_model, tiny_batches


def welford_reference(values: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Welford's algorithm one value at a time, in Python floats (slow, exact reference)."""
    rows = values.reshape(-1, values.shape[-1]).double().tolist()
    count, mean, m2 = 0, [0.0] * len(rows[0]), [0.0] * len(rows[0])
    for row in rows:
        count += 1
        for j, x in enumerate(row):
            delta = x - mean[j]
            mean[j] += delta / count
            m2[j] += delta * (x - mean[j])
    return count, torch.tensor(mean, dtype=torch.float64), torch.tensor(m2, dtype=torch.float64)


def two_pass_reference(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = values.reshape(-1, values.shape[-1]).double()
    mean = x.mean(0)
    return mean, ((x - mean) ** 2).sum(0) / x.shape[0]


def test_batch_moments_match_welford_and_two_pass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g) * torch.tensor([1.0, 2.0, 0.1, 5.0, 1e-3]) + 3.0
    m = batch_moments(x)
    count, mean, m2 = welford_reference(x)
    assert m.count == count == 21
    torch.testing.assert_close(m.mean, mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(m.m2, m2, rtol=1e-12, atol=1e-14)
    ref_mean, ref_var = two_pass_reference(x)
    torch.testing.assert_close(m.variance, ref_var, rtol=1e-12, atol=1e-15)
    assert m.mean.dtype == torch.float64


def test_multi_batch_merge_equals_one_pass_over_everything():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 6, generator=g) * 3 + 10 for n in (1, 5, 17, 2, 64)]
    running = Moments.empty(6)
    for b in batches:
        running.update(b, num_samples=b.shape[0])
    everything = torch.cat(batches)
    ref_mean, ref_var = two_pass_reference(everything)
    assert running.count == everything.shape[0] and running.num_samples == everything.shape[0]
    torch.testing.assert_close(running.mean, ref_mean, rtol=1e-14, atol=1e-13)
    torch.testing.assert_close(running.variance, ref_var, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(running.sample_variance, everything.double().var(0, unbiased=True), rtol=1e-12, atol=1e-13)
    # merging is associative: (a+b)+c == a+(b+c)
    a, b, c = (batch_moments(t) for t in batches[:3])
    left, right = merge_moments(merge_moments(a, b), c), merge_moments(a, merge_moments(b, c))
    torch.testing.assert_close(left.mean, right.mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(left.m2, right.m2, rtol=1e-12, atol=0)
    # an empty side is neutral
    assert torch.equal(merge_moments(Moments.empty(6), a).m2, a.m2)


def test_large_offset_is_stable_where_sum_of_squares_fails():
    # values 1e4 + N(0, 1e-2) in float32: E[x^2] - E[x]^2 loses every digit, the two-pass merge does not
    g = torch.Generator().manual_seed(2)
    batches = [(1e4 + 1e-2 * torch.randn(50, 3, generator=g)).float() for _ in range(4)]
    running = Moments.empty(3)
    for b in batches:
        running.update(b)
    ref_mean, ref_var = two_pass_reference(torch.cat(batches))
    torch.testing.assert_close(running.variance, ref_var, rtol=1e-9, atol=0)
    x = torch.cat(batches)
    naive = (x * x).mean(0) - x.mean(0) ** 2  # float32 textbook formula
    assert (naive.double() - ref_var).abs().max() > 10 * ref_var.max()


def test_chunked_reduction_of_a_large_batch(monkeypatch):
    import hf_sparsify.observers.moments as moments_module

    monkeypatch.setattr(moments_module, "_CHUNK_ELEMENTS", 16)  # 4 rows per chunk
    x = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(3))
    m = batch_moments(x)
    ref_mean, ref_var = two_pass_reference(x)
    torch.testing.assert_close(m.mean, ref_mean, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(m.variance, ref_var, rtol=1e-12, atol=1e-15)


def _manual_hidden(model, family, pixel_values):
    """The post-activation MLP values of block 0 recomputed by hand from the block's input."""
    adapter = get_adapter(model)
    group = adapter.structure_groups([MLP_NEURON, CONV_CHANNEL])[0]
    block_input = {}
    producer = model.get_submodule(group.producers[0])
    handle = producer.register_forward_pre_hook(lambda mod, inp: block_input.setdefault("x", inp[0].detach()))
    with torch.no_grad():
        model(pixel_values=pixel_values)
    handle.remove()
    x = block_input["x"]
    if family == "dinov2_swiglu":
        gate, up = (model.get_submodule(name) for name in group.producers)
        return group, torch.nn.functional.silu(gate(x)) * up(x)
    fc1 = model.get_submodule(group.producers[0])
    act = model.get_submodule(group.name).activation_fn if family != "convnext" else model.get_submodule(group.name).act
    return group, act(fc1(x))


@pytest.mark.parametrize("family", ["vit", "dinov2_swiglu", "convnext"])
def test_observer_pools_post_activation_values_over_batch_and_positions(family):
    model = make_tiny_model(family)
    batches = tiny_batches(model, num_batches=3, batch=2)
    group = get_adapter(model).structure_groups([MLP_NEURON, CONV_CHANNEL])[0]
    moments = collect_activation_moments(model, {"g": group.observe}, batches)["g"]
    hidden = torch.cat([_manual_hidden(model, family, b["pixel_values"])[1].reshape(-1, group.num_units) for b in batches])
    # ViT: batch x tokens; ConvNeXt: batch x H x W (pwconv layers see channels-last (B, H, W, C))
    assert moments.count == hidden.shape[0] and moments.num_samples == 6
    if family == "convnext":
        h = model.config.image_size // 4
        assert moments.count == 6 * h * h
    ref_mean, ref_var = two_pass_reference(hidden)
    torch.testing.assert_close(moments.mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moments.variance, ref_var, rtol=1e-4, atol=1e-6)


def test_observer_of_some_tokens_only():
    """``(module, slice)`` observes those tokens only; the same module may be observed twice."""
    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=2, batch=3)
    group = get_adapter(model).structure_groups([MLP_NEURON])[0]
    moments = collect_activation_moments(model, {"all": group.observe, "cls": (group.observe, slice(0, 1))}, batches)
    hidden = torch.cat([_manual_hidden(model, "vit", b["pixel_values"])[1] for b in batches])  # (6, tokens, units)
    assert moments["cls"].count == moments["cls"].num_samples == 6
    assert moments["all"].count == hidden.shape[0] * hidden.shape[1]
    ref_mean, ref_var = two_pass_reference(hidden[:, 0])
    torch.testing.assert_close(moments["cls"].mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moments["cls"].variance, ref_var, rtol=1e-4, atol=1e-6)


def test_hooks_are_removed_after_collection():
    model = make_tiny_model("vit")
    group = get_adapter(model).structure_groups([MLP_NEURON])[0]
    collect_activation_moments(model, {"g": group.observe}, tiny_batches(model, 1))
    assert not model.get_submodule(group.observe)._forward_pre_hooks


def test_non_finite_activations_are_an_error_naming_the_module():
    model = make_tiny_model("vit")
    group = get_adapter(model).structure_groups([MLP_NEURON])[0]
    batches = tiny_batches(model, 2)
    batches[1]["pixel_values"][0, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteActivationError, match=group.observe.replace(".", r"\.")):
        collect_activation_moments(model, {"g": group.observe}, batches)
    assert not model.get_submodule(group.observe)._forward_pre_hooks
