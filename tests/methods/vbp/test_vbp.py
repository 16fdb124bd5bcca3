"""VBP end to end on tiny models of every family: exactness of the mean-shift fold, selection, shapes, reload."""

import json
import math
import re

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification

import hf_sparsify
from hf_sparsify import PruningConfig, PruningConfigError, PruningError, VBPConfig
from hf_sparsify.adapters import CONV_CHANNEL, MLP_NEURON, StructureGroup, UnsupportedModelError, get_adapter
from hf_sparsify.data import CalibrationDataError
from hf_sparsify.structured import group_output_scale, kept_units, normalize_scores, shrink_group
from hf_sparsify.observers import collect_activation_moments
from tests.conftest import make_tiny_model, tiny_batches, tiny_pixel_values
from tests.methods.vbp.helpers import make_constant_neurons

FOLDABLE = ["vit", "deit", "deit_teacher", "dinov2", "dinov2_swiglu", "dinov2_registers", "convnext"]


def groups_of(model):
    return get_adapter(model).structure_groups([MLP_NEURON, CONV_CHANNEL])


def logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


# ------------------------------------------------------------------------------------------------ the bias fold
class TwoLayerMLP(nn.Module):
    def __init__(self, bias2=True):
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2, bias=bias2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
            self.fc1.bias.copy_(torch.tensor([0.0, 2.0, 0.5]))  # units 1 and 2 are the constants 2 and 0.5
            self.fc2.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
            if bias2:
                self.fc2.bias.copy_(torch.tensor([0.5, -1.0]))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


MLP_GROUP = dict(name="", kind=MLP_NEURON, block="", block_index=0, producers=["fc1"], consumers=["fc2"], num_units=3, observe="fc2")


def test_hand_computed_bias_fold():
    mlp = TwoLayerMLP()
    x = torch.tensor([[3.0, -1.0]])
    # dense: h = relu([3, 2, 0.5]) -> y = W2 h + b2 = [3 + 4 + 1.5 + 0.5, 12 + 10 + 3 - 1] = [9, 24]
    assert mlp(x).tolist() == [[9.0, 24.0]]
    shrink_group(mlp, StructureGroup(**MLP_GROUP), keep=torch.tensor([0]), fold_values=torch.tensor([1.0, 2.0, 0.5]))
    # b2' = b2 + W2[:, [1, 2]] @ [2, 0.5] = [0.5 + 4 + 1.5, -1 + 10 + 3] = [6, 12]
    assert mlp.fc2.bias.tolist() == [6.0, 12.0]
    assert mlp.fc2.weight.tolist() == [[1.0], [4.0]] and mlp.fc1.weight.tolist() == [[1.0, 0.0]] and mlp.fc1.bias.tolist() == [0.0]
    assert mlp(x).tolist() == [[9.0, 24.0]]


def test_hand_computed_bias_fold_creates_a_missing_bias():
    mlp = TwoLayerMLP(bias2=False)
    shrink_group(mlp, StructureGroup(**MLP_GROUP), keep=torch.tensor([0]), fold_values=torch.tensor([1.0, 2.0, 0.5]))
    assert mlp.fc2.bias.tolist() == [5.5, 13.0]  # W2[:, [1, 2]] @ [2, 0.5]
    assert mlp(torch.tensor([[3.0, -1.0]])).tolist() == [[8.5, 25.0]]  # the dense output without b2


# ------------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("family", FOLDABLE)
@pytest.mark.parametrize("allocation", ["global", "per_layer"])
def test_constant_neurons_are_removed_without_changing_the_outputs(family, allocation):
    model = make_tiny_model(family)
    constant = {}
    for k, group in enumerate(groups_of(model)):
        g = torch.Generator().manual_seed(k)
        units = torch.randperm(group.num_units, generator=g)[: group.num_units // 4 // 8 * 8 or 8].sort().values
        make_constant_neurons(model, group, units, value=0.3 + 0.1 * k)
        constant[group.name] = set(units.tolist())
    ratio = sum(map(len, constant.values())) / sum(g.num_units for g in groups_of(model))
    if allocation == "per_layer" and len({len(v) / g.num_units for v, g in zip(constant.values(), groups_of(model))}) > 1:
        pytest.skip("constant fractions differ per layer; per_layer allocation cannot match them all")
    x = tiny_pixel_values(model, batch=6, seed=11)  # not the calibration images
    before = logits(model, x)
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=ratio, allocation=allocation), tiny_batches(model, 3))
    for group in groups_of(pruned):
        layer = pruned.pruning_result.layers[group.name]
        assert layer["dense_width"] - layer["width"] == len(constant[group.name])
        assert layer["removed_variance_fraction"] < 1e-12
    torch.testing.assert_close(logits(pruned, x), before, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def _pooled_outputs(model, module_name, batches):
    """Outputs of ``module_name`` (a tensor or the first of a tuple) over ``batches``, pooled to (N, channels)."""
    outs = []

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        if out.dim() == 4 and not isinstance(module, nn.Linear):  # ConvNeXt blocks return (B, C, H, W)
            out = out.permute(0, 2, 3, 1)
        outs.append(out.detach().reshape(-1, out.shape[-1]).double())

    handle = model.get_submodule(module_name).register_forward_hook(hook)
    with torch.no_grad():
        for batch in batches:
            model(pixel_values=batch["pixel_values"])
    handle.remove()
    return torch.cat(outs)


@pytest.mark.parametrize("family", ["vit", "dinov2", "dinov2_swiglu", "convnext"])
def test_compensation_preserves_the_mean_output_over_the_calibration_data(family):
    model = make_tiny_model(family)
    batches = tiny_batches(model, 3)
    last = groups_of(model)[-1]
    block = last.block
    config = dict(pruning_ratio=0.5, targets=[re.escape(last.name) + "$"])
    dense_mlp = _pooled_outputs(model, last.consumers[0], batches)
    dense_block = _pooled_outputs(model, block, batches)
    compensated = hf_sparsify.prune(model, VBPConfig(**config, compensation_tokens="all"), batches)
    plain = hf_sparsify.prune(model, VBPConfig(**config, compensation=False), batches)
    assert compensated.get_submodule(last.producers[0]).out_features < model.get_submodule(last.producers[0]).out_features
    # the MLP's output and the residual stream after the pruned block keep their mean (LayerScale included)
    for dense, name in ((dense_mlp, last.consumers[0]), (dense_block, block)):
        mean = _pooled_outputs(compensated, name, batches).mean(0)
        torch.testing.assert_close(mean, dense.mean(0), rtol=0, atol=2e-6)
        shift = (_pooled_outputs(plain, name, batches).mean(0) - dense.mean(0)).abs().max()
        assert shift > 1e-4 and shift > 50 * (mean - dense.mean(0)).abs().max()  # without the fold the mean moves


def _head_token_outputs(model, module_name, batches, tokens: slice):
    outs = []
    handle = model.get_submodule(module_name).register_forward_hook(lambda m, i, o: outs.append(o[:, tokens].detach().reshape(-1, o.shape[-1]).double()))
    with torch.no_grad():
        for batch in batches:
            model(pixel_values=batch["pixel_values"])
    handle.remove()
    return torch.cat(outs)


@pytest.mark.parametrize("family, tokens", [("vit", slice(0, 1)), ("deit", slice(0, 1)), ("deit_teacher", slice(0, 2))])
def test_last_block_fold_preserves_the_mean_of_the_tokens_the_head_reads(family, tokens):
    """Default ``compensation_tokens="head"``: the last block's fold keeps the mean of its output over the tokens the
    classifier reads (CLS; CLS + distillation for DeiT with teacher); earlier blocks keep the all-token mean."""
    model = make_tiny_model(family)
    assert get_adapter(model).head_tokens() == tokens
    batches = tiny_batches(model, 3)
    first, last = groups_of(model)[0], groups_of(model)[-1]
    only_last = dict(pruning_ratio=0.5, round_to=1, targets=[re.escape(last.name) + "$"])  # its inputs stay dense
    dense = _head_token_outputs(model, last.consumers[0], batches, tokens).mean(0)
    head = hf_sparsify.prune(model, VBPConfig(**only_last), batches)
    assert head.pruning_result.info["compensation_head_tokens"] == last.name
    torch.testing.assert_close(_head_token_outputs(head, last.consumers[0], batches, tokens).mean(0), dense, rtol=0, atol=2e-6)
    # the all-token fold moves the head tokens' mean of the last block
    paper = hf_sparsify.prune(model, VBPConfig(**only_last, compensation_tokens="all"), batches)
    assert (_head_token_outputs(paper, last.consumers[0], batches, tokens).mean(0) - dense).abs().max() > 1e-4
    # every block pruned: earlier blocks fold the all-token mean (their output reaches every token) ...
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, round_to=1), batches)
    paper = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, round_to=1, compensation_tokens="all"), batches)
    for m in (pruned, paper):
        torch.testing.assert_close(
            _pooled_outputs(m, first.consumers[0], batches).mean(0), _pooled_outputs(model, first.consumers[0], batches).mean(0), rtol=0, atol=2e-6
        )
    # ... and the same neurons are kept either way: only the folded bias of the last block differs
    for name, param in pruned.named_parameters():
        if not name.startswith(last.consumers[0] + ".bias"):
            torch.testing.assert_close(param, paper.get_parameter(name), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["dinov2", "convnext"])
def test_models_whose_output_reads_every_token_fold_the_all_token_mean(family):
    model = make_tiny_model(family)
    assert get_adapter(model).head_tokens() is None
    batches = tiny_batches(model, 2)
    head = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5), batches)
    paper = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, compensation_tokens="all"), batches)
    assert head.pruning_result.info["compensation_head_tokens"] is None
    for name, param in head.named_parameters():
        torch.testing.assert_close(param, paper.get_parameter(name), rtol=0, atol=0)


def test_bare_backbone_has_no_head_tokens():
    from transformers import ViTConfig, ViTModel

    assert get_adapter(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4))).head_tokens() is None


@pytest.mark.parametrize("normalization", ["output", "mean"])
def test_global_allocation_is_one_threshold_on_normalised_variances(normalization):
    model = make_tiny_model("vit", num_hidden_layers=3, intermediate_size=48)
    batches = tiny_batches(model, 3)
    groups = groups_of(model)
    moments = collect_activation_moments(model, {g.name: g.observe for g in groups}, batches)
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.4, round_to=1, min_neurons_per_layer=0, global_normalization=normalization), batches)
    kept_scores, removed_scores = [], []
    for g in groups:
        scores = normalize_scores(moments[g.name].variance, normalization, group_output_scale(model, g))
        fc1 = pruned.get_submodule(g.producers[0])
        kept = [i for i in range(g.num_units) if any(torch.equal(model.get_submodule(g.producers[0]).weight[i], row) for row in fc1.weight)]
        mask = torch.zeros(g.num_units, dtype=torch.bool)
        mask[kept] = True
        kept_scores.append(scores[mask])
        removed_scores.append(scores[~mask])
    assert torch.cat(kept_scores).min() >= torch.cat(removed_scores).max()
    assert pruned.pruning_result.info["neurons_removed_fraction"] == pytest.approx(0.4, abs=1 / 144)
    assert len({int(fc.numel()) for fc in kept_scores}) > 1  # layers end up with different widths


@pytest.mark.parametrize("allocation", ["global", "per_layer"])
def test_target_macs_reduction_is_reached(allocation):
    model = make_tiny_model("vit", hidden_size=32, intermediate_size=128, num_hidden_layers=3)
    pruned = hf_sparsify.prune(model, VBPConfig(target_macs_reduction=0.3, allocation=allocation, round_to=8), tiny_batches(model, 2))
    report = hf_sparsify.sparsity_report(pruned)
    reduction = 1 - report.macs["pruned"] / report.macs["dense"]
    assert reduction == pytest.approx(pruned.pruning_result.info["macs_reduction"], abs=1e-9)
    one_chunk = 8 * 2 * 32 * ((16 // 4) ** 2 + 1) / report.macs["dense"]  # 8 neurons x (fc1 + fc2) x (patches + CLS)
    assert abs(reduction - 0.3) <= one_chunk
    widths = [layer["width"] for layer in pruned.pruning_result.layers.values()]
    assert all(w % 8 == 0 for w in widths)
    if allocation == "per_layer":
        assert len(set(widths)) == 1


# ------------------------------------------------------------------------------------------------ shapes and reload
def _ignore_last(model):
    return [re.escape(groups_of(model)[-1].name) + "$"]


@pytest.mark.parametrize("family", FOLDABLE + ["convnextv2"])
def test_non_uniform_widths_reload_in_one_call_and_plain_transformers_refuses(family, tmp_path):
    model = make_tiny_model(family)
    config = VBPConfig(pruning_ratio=0.5, ignore=_ignore_last(model), compensation=family != "convnextv2")
    pruned = hf_sparsify.prune(model, config, tiny_batches(model, 2))
    widths = [g.num_units for g in groups_of(pruned)]
    assert len(set(widths)) > 1 and widths[-1] == groups_of(model)[-1].num_units
    pruned.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    x = tiny_pixel_values(model)
    assert type(loaded) is type(pruned) and torch.equal(logits(loaded, x), logits(pruned, x))
    assert [g.num_units for g in groups_of(loaded)] == widths
    assert isinstance(loaded.pruning_config, VBPConfig) and loaded.pruning_config.pruning_ratio == 0.5
    with pytest.raises(Exception, match=r"(?i)size mismatch|mismatch|per.layer|ambiguous"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2"])
def test_uniform_widths_set_the_standard_field_and_plain_transformers_loads(family, tmp_path):
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, allocation="per_layer"), tiny_batches(model, 2))
    assert {g.num_units for g in groups_of(pruned)} == {32}
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "per_layer_config" not in saved
    assert saved.get("intermediate_size", 32 * saved.get("mlp_ratio", 0)) == 32
    x = tiny_pixel_values(model)
    plain = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(logits(plain, x), logits(pruned, x))
    assert torch.equal(logits(hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path), x), logits(pruned, x))


@pytest.mark.parametrize("family", ["dinov2_swiglu", "convnext"])
def test_uniform_widths_without_a_config_field_need_the_sparse_loader(family, tmp_path):
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, allocation="per_layer"), tiny_batches(model, 2))
    pruned.save_pretrained(tmp_path)
    x = tiny_pixel_values(model)
    assert torch.equal(logits(hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path), x), logits(pruned, x))
    with pytest.raises(Exception, match=r"(?i)mismatch"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_report_and_summary_show_widths(tmp_path):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, ignore=_ignore_last(model)), tiny_batches(model, 2))
    report = hf_sparsify.sparsity_report(pruned)
    mlps = [s for s in report.structures if s["kind"] == MLP_NEURON]
    assert [(s["units"], s["dense_units"]) for s in mlps] == [(32, 64), (64, 64)]
    assert "Structures (kept / dense)" in str(report) and report.macs["pruned"] < report.macs["dense"]
    pruned.save_pretrained(tmp_path)
    summary = json.loads((tmp_path / "sparsity_summary.json").read_text())
    layers = summary["pruning"]["layers"]
    assert layers["vit.layers.0.mlp"]["width"] == 32 and layers["vit.layers.0.mlp"]["dense_width"] == 64
    assert summary["pruning"]["info"]["macs_reduction"] > 0
    assert PruningConfig.from_pretrained(tmp_path) == pruned.pruning_config


# ------------------------------------------------------------------------------------------------ ConvNeXtV2 (GRN)
def test_convnextv2_refuses_explicit_compensation_with_a_clear_message():
    model = make_tiny_model("convnextv2")
    with pytest.raises(PruningConfigError, match=r"GRN.*compensation=False"):
        hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, compensation=True), tiny_batches(model, 2))


def test_convnextv2_default_compensation_prunes_without_the_fold_and_says_so():
    model = make_tiny_model("convnextv2")
    auto = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5), tiny_batches(model, 2))
    plain = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, compensation=False), tiny_batches(model, 2))
    assert auto.pruning_result.info["compensation"] is False
    assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(), plain.state_dict().values()))


def test_convnextv2_without_compensation_prunes_grn_entries_too():
    model = make_tiny_model("convnextv2")
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, compensation=False), tiny_batches(model, 2))
    for group in groups_of(pruned):
        block = pruned.get_submodule(group.name)
        assert block.grn.weight.shape[-1] == block.pwconv1.out_features == block.pwconv2.in_features == group.num_units
    assert torch.isfinite(logits(pruned, tiny_pixel_values(model))).all()


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pruning_ratio=1.0), "delete every neuron"),
        (dict(), "exactly one of pruning_ratio"),
        (dict(pruning_ratio=0.3, target_macs_reduction=0.3), "exactly one"),
        (dict(target_macs_reduction=0.0), "target_macs_reduction"),
        (dict(pruning_ratio=0.5, allocation="uniform"), "allocation"),
        (dict(pruning_ratio=0.5, round_to=0), "round_to"),
        (dict(pruning_ratio=0.5, min_neurons_per_layer=-1), "min_neurons_per_layer"),
        (dict(pruning_ratio=0.5, sparsity=0.5), "unknown key"),
        (dict(pruning_ratio=0.5, compensation_tokens="cls"), "compensation_tokens"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(PruningConfigError, match=match):
        VBPConfig(**kwargs)


def test_config_roundtrip_and_cli_field(tmp_path):
    config = VBPConfig(target_macs_reduction=0.35, allocation="per_layer")
    config.save_pretrained(tmp_path)
    assert PruningConfig.from_pretrained(tmp_path) == config
    assert VBPConfig.target_field == "pruning_ratio" and "vbp" in hf_sparsify.available_methods()


def test_ratio_that_would_delete_every_neuron():
    model = make_tiny_model("vit")
    with pytest.raises(PruningConfigError, match="delete every MLP neuron"):
        hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.99, min_neurons_per_layer=0), tiny_batches(model, 2))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_min_neurons_per_layer_zero_may_remove_a_whole_mlp(tmp_path):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.6, min_neurons_per_layer=0, ignore=_ignore_last(model), allocation="per_layer", round_to=64), tiny_batches(model, 2))
    first = groups_of(pruned)[0]
    assert first.num_units == 0  # the MLP is the constant folded bias now
    x = tiny_pixel_values(model)
    assert torch.isfinite(logits(pruned, x)).all()
    pruned.save_pretrained(tmp_path)
    assert torch.equal(logits(hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path), x), logits(pruned, x))


def test_unreachable_macs_target():
    model = make_tiny_model("vit")
    with pytest.raises(PruningConfigError, match="cannot be reached.*at most"):
        hf_sparsify.prune(model, VBPConfig(target_macs_reduction=0.95), tiny_batches(model, 2))


def test_model_without_a_known_mlp():
    from transformers import SwinConfig, SwinForImageClassification

    swin = SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)).eval()
    batches = [{"pixel_values": torch.randn(2, 3, 32, 32)}]
    with pytest.raises(UnsupportedModelError, match="no adapter"):
        hf_sparsify.prune(swin, VBPConfig(pruning_ratio=0.5), batches)
    with pytest.raises(UnsupportedModelError, match="VBP prunes the MLPs a model adapter knows"):
        hf_sparsify.prune(swin, VBPConfig(pruning_ratio=0.5, targets=[r"intermediate\.dense"]), batches)
    model = make_tiny_model("vit")
    with pytest.raises(PruningConfigError, match="matched no MLP"):
        hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, targets=[r"classifier"]), tiny_batches(model, 1))


def test_too_little_calibration_data():
    model = make_tiny_model("vit")
    one_image = [{"pixel_values": tiny_pixel_values(model, batch=1)}]
    with pytest.raises(CalibrationDataError, match="at least 2 images"):
        hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5), one_image)


def test_non_finite_activations():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, 2)
    batches[0]["pixel_values"][1, :, 2, 3] = math.inf
    with pytest.raises(PruningError, match="non-finite"):
        hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5), batches)


# ------------------------------------------------------------------------------------------------ the result's summary
@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_summary_reports_neurons_macs_and_parameters_removed(family):
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, round_to=1), tiny_batches(model, 2))
    summary = pruned.pruning_result.summary
    report = hf_sparsify.sparsity_report(pruned)
    assert set(summary) == {"neurons_removed", "macs_reduction", "params_reduction"}  # not a "sparsity" of 0
    assert summary["neurons_removed"] == pytest.approx(0.5, abs=1e-6)
    assert summary["macs_reduction"] == pytest.approx(1 - report.macs["pruned"] / report.macs["dense"], abs=1e-6) and summary["macs_reduction"] > 0
    assert summary["params_reduction"] == pytest.approx(1 - report.total_params / report.dense_params, abs=1e-6) and summary["params_reduction"] > 0


# ------------------------------------------------------------------------------------------------ half precision
def _cpu_runs(dtype) -> bool:
    try:
        model = make_tiny_model("vit").to(dtype)
        with torch.no_grad():
            model(pixel_values=tiny_pixel_values(model, batch=1).to(dtype))
        return True
    except RuntimeError:
        return False


HALF = [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.skipif(not _cpu_runs(torch.float16), reason="this CPU build lacks float16 ops"))]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("family", FOLDABLE + ["convnextv2"])
def test_half_precision_models_fold_in_float64_and_keep_their_dtype(family, dtype, tmp_path):
    model = make_tiny_model(family).to(dtype)
    batches = [{"pixel_values": b["pixel_values"].to(dtype)} for b in tiny_batches(model, 3)]
    groups = groups_of(model)
    moments = collect_activation_moments(model, {g.name: g.observe for g in groups}, batches)
    assert all(m.mean.dtype == torch.float64 for m in moments.values())
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, round_to=1, compensation_tokens="all"), batches)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    for group in groups:
        width = pruned.pruning_result.layers[group.name]["width"]
        removed = torch.ones(group.num_units, dtype=torch.bool)
        removed[kept_units(moments[group.name].variance, width)] = False
        consumer = model.get_submodule(group.consumers[0])
        shift = consumer.weight[:, removed].double() @ moments[group.name].mean[removed]
        expected = (consumer.bias.double() + shift).to(dtype)  # computed in float64, rounded once
        if group.blocks_exact_fold:  # ConvNeXtV2's GRN: no fold by default
            expected = consumer.bias
        assert torch.equal(pruned.get_submodule(group.consumers[0]).bias, expected)
    x = tiny_pixel_values(model).to(dtype)
    assert torch.isfinite(logits(pruned, x)).all()
    pruned.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert next(loaded.parameters()).dtype == dtype and torch.equal(logits(loaded, x), logits(pruned, x))


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_constant_neurons_are_removed_without_changing_the_outputs(dtype):
    model = make_tiny_model("vit")
    for k, group in enumerate(groups_of(model)):
        make_constant_neurons(model, group, torch.arange(0, group.num_units, 2), value=0.3 + 0.1 * k)
    model = model.to(dtype)
    x = tiny_pixel_values(model, batch=6, seed=11).to(dtype)
    batches = [{"pixel_values": b["pixel_values"].to(dtype)} for b in tiny_batches(model, 3)]
    pruned = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, compensation_tokens="all"), batches)
    assert all(layer["removed_variance_fraction"] == 0 for layer in pruned.pruning_result.layers.values())
    # the removed neurons' contribution moves into the bias: equal up to the half-precision rounding of the sums
    torch.testing.assert_close(logits(pruned, x).float(), logits(model, x).float(), rtol=0, atol=8e-3 if dtype == torch.bfloat16 else 1e-3)
    plain = hf_sparsify.prune(model, VBPConfig(pruning_ratio=0.5, compensation=False), batches)
    assert (logits(plain, x).float() - logits(model, x).float()).abs().max() > 3e-2  # without the fold they move
