"""2:4 semi-structured conversion: the pattern check and mask against brute force; the layers a 2:4-pruned model
offers; on this CPU machine a clear error; on an Ampere-or-newer GPU the converted model equals the masked dense
model (skipped without one)."""

import itertools

import pytest
import torch

import hf_sparsify
from hf_sparsify.speed import RuntimeUnavailableError, benchmark
from hf_sparsify.speed.semi_structured import (
    SemiStructuredUnavailableError,
    check_semi_structured_support,
    compare_with_dense,
    is_2_4_sparse,
    mask_2_4,
    semi_structured_layers,
    to_semi_structured,
)
from hf_sparsify.speed.timing import TimingRule
from tests.conftest import make_tiny_model, tiny_batches

HAS_SPARSE_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def test_mask_keeps_the_two_largest_of_every_four_like_brute_force():
    weight = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    mask = mask_2_4(weight)
    for row, group in itertools.product(range(6), range(4)):
        values = weight[row, 4 * group : 4 * group + 4].abs()
        best = max(itertools.combinations(range(4), 2), key=lambda pair: values[list(pair)].sum())
        assert sorted(mask[row, 4 * group : 4 * group + 4].nonzero().flatten().tolist()) == sorted(best)
    assert is_2_4_sparse(weight * mask) and not is_2_4_sparse(weight)


def test_pattern_check_edges():
    assert is_2_4_sparse(torch.zeros(2, 8))
    assert not is_2_4_sparse(torch.zeros(2, 6))  # not a multiple of 4
    assert not is_2_4_sparse(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="multiple of 4"):
        mask_2_4(torch.randn(2, 6))


def test_a_2_4_pruned_model_offers_its_prunable_linear_layers():
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(mask_structure="2:4"))
    layers = semi_structured_layers(pruned)
    prunable = [l.name for l in hf_sparsify.get_adapter(pruned).prunable_layers()]
    assert layers == prunable  # q, k, v, o, fc1, fc2 of every block; not the classifier
    assert semi_structured_layers(model) == []


@pytest.mark.skipif(HAS_SPARSE_GPU, reason="this machine has a GPU that runs 2:4 kernels")
def test_without_a_supporting_gpu_it_says_so_and_stops():
    with pytest.raises(SemiStructuredUnavailableError, match="compute capability ≥ 8.0.*no CUDA GPU is available here"):
        check_semi_structured_support()
    pruned = hf_sparsify.prune(make_tiny_model("vit"), hf_sparsify.MagnitudeConfig(mask_structure="2:4")).half()
    with pytest.raises(SemiStructuredUnavailableError, match="NVIDIA GPU"):
        to_semi_structured(pruned)
    with pytest.raises(RuntimeUnavailableError, match="--runtime semi-structured: .*Use --runtime eager, compile or onnxruntime"):
        benchmark(pruned, runtime="semi-structured", dtype="fp16")
    assert semi_structured_layers(pruned)  # nothing was converted


def _vit_b_like(dtype):
    """Shapes the kernels take (multiples of 64), small enough for a test."""
    return make_tiny_model("vit", hidden_size=128, intermediate_size=256, num_attention_heads=2, image_size=32, patch_size=8).to(dtype)


@pytest.mark.skipif(not HAS_SPARSE_GPU, reason="needs an NVIDIA GPU of compute capability ≥ 8.0")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_model_equals_the_masked_dense_model_on_gpu(dtype):
    model = _vit_b_like(torch.float32)
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(mask_structure="2:4")).to("cuda", dtype)
    dense = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(mask_structure="2:4")).to("cuda", dtype)
    conversion = to_semi_structured(pruned)
    assert len(conversion.converted) == 12 and not conversion.kept_dense
    x = torch.randn(64, 3, 32, 32, device="cuda", dtype=dtype)
    diff = compare_with_dense(pruned, dense, {"pixel_values": x})
    assert diff["max_rel_diff"] < (2e-2 if dtype == torch.bfloat16 else 5e-3), diff
    result = benchmark(dense, baseline=model.to(dtype), runtime="semi-structured", device="cuda", dtype=dtype, batch_size=8, rule=TimingRule(min_repeats=5, max_seconds=5))
    assert result.speedup > 0 and "2:4 semi-structured kernels" in " ".join(result.notes)
