"""CAP, WoodFisher and FastCAP on bfloat16, float16 and float64 models (issue 12.1): with labels and label-free,
with and without bf16 autocast; Fisher sums in float64 whatever the model's dtype; weights written back in the
model's dtype with the exact mask; a float64 model equals the float64 oracle."""

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

import hf_sparsify
from hf_sparsify import CAPConfig, FastCAPConfig, WoodFisherConfig
from hf_sparsify.adapters import get_adapter
from hf_sparsify.methods.cap.pruner import _GradientFisherPruner
from hf_sparsify.observers.fisher import BlockLayout, FisherTarget
from tests import oracles
from tests.conftest import TINY_FAMILIES, make_tiny_model, tiny_batches
from tests.methods.cap.helpers import rel_err

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
CONFIGS = {
    "cap": CAPConfig(sparsity=0.6, fisher_block_size=16, num_grads=3),
    "woodfisher": WoodFisherConfig(sparsity=0.6, fisher_block_size=16, num_grads=3),
    "fastcap": FastCAPConfig(sparsity=0.6, fisher_block_size=16, num_grads=3),
}


def test_the_issue_reproduction_prunes_a_bfloat16_model():
    m = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=10)).to(torch.bfloat16)
    batches = [{"pixel_values": torch.randn(4, 3, 32, 32, dtype=torch.bfloat16), "labels": torch.randint(0, 10, (4,))}]
    pruned = hf_sparsify.prune(m, hf_sparsify.CAPConfig(sparsity=0.5, fisher_block_size=16, num_grads=1), batches)
    assert hf_sparsify.sparsity_report(pruned).sparsity == pytest.approx(0.5, abs=0.02)
    assert pruned.vit.layers[0].mlp.fc1.weight.dtype == torch.bfloat16


def _mask_agreement(a, b) -> float:
    la, lb = get_adapter(a).prunable_layers(), get_adapter(b).prunable_layers()
    return sum(int(((x.weight == 0) == (y.weight == 0)).sum()) for x, y in zip(la, lb)) / sum(l.numel for l in la)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("loss", ["labels", "features"])
@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_prunes(dtype, method, loss, mixed_precision):
    model = make_tiny_model("vit").to(DTYPES[dtype])
    config = CONFIGS[method].replace(loss=loss, mixed_precision=mixed_precision)
    batches = tiny_batches(model, num_batches=3)  # float32 pixel values, cast to the model's dtype
    pruned = hf_sparsify.prune(model, config, batches)
    result = pruned.pruning_result
    assert result.info["fisher_dtype"] == "float64"  # statistics in float64 whatever the model's dtype
    assert result.info["num_grads"] == 3 and result.info["num_calibration_samples"] == 12
    layers = get_adapter(pruned).prunable_layers()
    assert all(l.weight.dtype == DTYPES[dtype] for l in layers)
    zeros = sum(int((l.weight == 0).sum()) for l in layers)
    total = sum(l.numel for l in layers)
    if method == "fastcap":
        for layer in layers:
            assert (layer.weight == 0).float().mean().item() == pytest.approx(0.6, abs=16 / layer.numel)
    else:
        assert zeros == round(0.6 * total)  # exact, also where a kept weight is below float16's smallest value
    assert torch.isfinite(pruned(pixel_values=batches[0]["pixel_values"].to(DTYPES[dtype])).logits).all()
    if mixed_precision == "no":
        # the same (rounded) weights pruned as a float32 model: half-precision gradients change few masks
        reference = hf_sparsify.prune(model.float(), config, batches)
        agreement = _mask_agreement(pruned, reference)
        assert agreement == 1.0 if dtype == "fp64" else agreement > 0.98


@pytest.mark.parametrize("family", sorted(set(TINY_FAMILIES) - {"vit", "deit_teacher"}))
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_on_every_family(family, dtype):
    model = make_tiny_model(family).to(DTYPES[dtype])
    pruned = hf_sparsify.prune(model, CONFIGS["cap"], tiny_batches(model, num_batches=3))
    layers = get_adapter(pruned).prunable_layers()
    assert sum(int((l.weight == 0).sum()) for l in layers) == round(0.6 * sum(l.numel for l in layers))
    assert all(l.weight.dtype == DTYPES[dtype] for l in layers)


def test_a_float64_model_equals_the_float64_oracle():
    model = make_tiny_model("vit").double()
    batches = [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in tiny_batches(model, num_batches=12, batch=2)]
    targets = [r"layers\.0\.mlp\.fc1$", r"layers\.1\.attention\.q_proj$"]
    config = CAPConfig(sparsity=0.6, targets=targets, fisher_block_size=16, num_grads=12)
    pruned = hf_sparsify.prune(model, config, batches)
    layers = get_adapter(model).select_layers(targets)
    layouts = [BlockLayout.for_weight(l.weight, 16) for l in layers]
    grads = [[] for _ in layers]
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for i, (layer, layout) in enumerate(zip(layers, layouts)):
            grads[i].append(layout.to_blocks(layer.weight.grad * (layer.weight != 0)).numpy())
    model.zero_grad()
    inputs = []
    for layer, layout, g in zip(layers, layouts, grads):
        g = np.stack(g)
        w = layout.to_blocks(layer.weight.detach()).numpy()
        inputs.append((w, np.stack([oracles.damped_fisher(g[:, b], config.damp) for b in range(w.shape[0])])))
    expected = oracles.cap_prune_layers(inputs, round(0.6 * sum(w.size for w, _ in inputs)))
    for layer, layout, e in zip(get_adapter(pruned).select_layers(targets), layouts, expected):
        got = layout.to_blocks(layer.weight.detach()).numpy()
        assert np.array_equal(got == 0, e == 0) and rel_err(got, e) < 1e-7


def test_kept_weights_below_float16_range_keep_the_mask():
    weight = torch.nn.Parameter(torch.ones(2, 4, dtype=torch.float16))
    target = FisherTarget("fc", weight, BlockLayout.for_weight(weight, 4))
    new = torch.tensor([[1e-9, 0.0, -1e-9, 0.5], [2.0, 0.0, 3e-8, -1.0]], dtype=torch.float64)
    _GradientFisherPruner._write(target, new)
    assert torch.equal(weight != 0, new != 0)
    assert weight[0, 0] > 0 and weight[0, 2] < 0 and weight[0, 3] == 0.5
