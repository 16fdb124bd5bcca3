import pytest
import torch

import hf_sparsify
from hf_sparsify import MagnitudeConfig
from hf_sparsify.adapters import get_adapter
from tests.conftest import make_tiny_model, tiny_pixel_values


def _targets(model):
    return get_adapter(model).prunable_layers()


def test_uniform_prunes_every_layer_to_the_target(tiny_model):
    pruned = hf_sparsify.prune(tiny_model, MagnitudeConfig(sparsity=0.5))
    for layer in _targets(pruned):
        w = layer.weight
        assert abs((w == 0).float().mean().item() - 0.5) <= 1 / w.numel()
        # the survivors are the largest magnitudes of the original layer
        original = tiny_model.get_submodule(layer.name).weight
        kept = original.abs()[w != 0]
        removed = original.abs()[w == 0]
        assert kept.min() >= removed.max()


def test_global_ranks_all_layers_together():
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.6, sparsity_distribution="global"))
    layers = _targets(pruned)
    total = sum(l.numel for l in layers)
    zeros = sum(int((l.weight == 0).sum()) for l in layers)
    assert zeros == round(0.6 * total)
    threshold = max(model.get_submodule(l.name).weight.abs()[l.weight == 0].max() for l in layers)
    assert all(model.get_submodule(l.name).weight.abs()[l.weight != 0].min() >= threshold for l in layers)
    per_layer = {round((l.weight == 0).float().mean().item(), 2) for l in layers}
    assert len(per_layer) > 1  # layers end up with different sparsities


def test_input_model_is_untouched_unless_inplace():
    model = make_tiny_model("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5))
    assert pruned is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5), inplace=True)
    assert same is model and hf_sparsify.sparsity_report(model).sparsity == pytest.approx(0.5, abs=1e-3)


def test_nm_2_4_mask_and_conv_downsample():
    model = make_tiny_model("convnext")
    pruned = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, mask_structure="2:4"))
    for layer in _targets(pruned):
        w = layer.weight
        groups = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(-1, 4)
        assert ((groups != 0).sum(-1) <= 2).all()


def test_nm_refuses_layers_it_cannot_split(tiny_factory):
    model = tiny_factory("vit", hidden_size=30, intermediate_size=62, num_attention_heads=3)
    with pytest.raises(ValueError, match="not a multiple of M=4"):
        hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, mask_structure="2:4"))


def test_targets_select_the_classifier_and_ignore_skips_layers():
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, targets=[r"classifier"]))
    assert (pruned.classifier.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert all((l.weight != 0).all() for l in _targets(pruned))
    pruned = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, ignore=[r"attention"]))
    for layer in _targets(pruned):
        assert ((layer.weight == 0).any()) == ("mlp" in layer.name)


def test_result_records_per_layer_sparsity_and_timing():
    pruned = hf_sparsify.prune(make_tiny_model("deit"), MagnitudeConfig(sparsity=0.3))
    result = pruned.pruning_result
    assert result.method == "magnitude" and "selection" in result.timings
    assert all(abs(v["sparsity"] - 0.3) < 0.02 for v in result.layers.values())
    x = tiny_pixel_values(pruned)
    assert torch.isfinite(pruned(pixel_values=x).logits).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("distribution", ["uniform", "global"])
def test_non_finite_weights_are_refused_naming_the_layer(bad, distribution):
    from hf_sparsify import PruningError

    model = make_tiny_model("vit")
    with torch.no_grad():
        model.get_submodule("vit.layers.1.mlp.fc1").weight[0, 3] = bad
    with pytest.raises(PruningError, match=r"vit\.layers\.1\.mlp\.fc1 holds 1 NaN or inf"):
        hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, sparsity_distribution=distribution))
