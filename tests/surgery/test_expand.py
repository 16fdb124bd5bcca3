"""Widening (hf_sparsify.expand, surgery.add_units): the function is unchanged on every family, the widened model saves
and reloads in one call, training grows the new units, pruning after widening works, every dtype, clear errors."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoModelForImageClassification

import hf_sparsify
from hf_sparsify import ExpansionError, UnsupportedModelError
from hf_sparsify.adapters import CONV_CHANNEL, get_adapter
from hf_sparsify.surgery import add_units, is_structured, widened_width
from tests.conftest import TINY_FAMILIES, make_tiny_model, tiny_batches, tiny_pixel_values

ALL_KINDS = ("mlp", "channels", "heads")
GRN_FAMILIES = {"convnextv2"}  # the function is unchanged up to GRN's 1e-6 in its denominator (see surgery/expand.py)


def _widths(model):
    return {g.name: g.num_units for g in get_adapter(model).structure_groups()}


def _tolerance(family):
    return dict(rtol=1e-6, atol=1e-6) if family in GRN_FAMILIES else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_expand_keeps_the_logits_on_every_family(family):
    model = make_tiny_model(family).double()
    x = tiny_pixel_values(model).double()
    before = model(pixel_values=x).logits
    dense = _widths(model)
    uniform = hf_sparsify.expand(model, "all", 2, kinds=ALL_KINDS)
    assert _widths(uniform) == {name: 2 * width for name, width in dense.items()}
    torch.testing.assert_close(uniform(pixel_values=x).logits, before, **_tolerance(family))
    # non-uniform: block 0's groups ×1.5, the last block's ×3
    last = len(get_adapter(model).blocks()) - 1
    mixed = hf_sparsify.expand(hf_sparsify.expand(model, [0], 1.5, kinds=ALL_KINDS), [last], 3, kinds=ALL_KINDS)
    assert _widths(mixed) != _widths(uniform)
    torch.testing.assert_close(mixed(pixel_values=x).logits, before, **_tolerance(family))
    assert _widths(model) == dense  # the input model is untouched


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_widened_model_saves_and_reloads_in_one_call(family, tmp_path):
    model = make_tiny_model(family)
    wide = hf_sparsify.expand(model, [0], 2, kinds=ALL_KINDS)
    assert is_structured(wide.config)
    wide.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is type(wide) and _widths(loaded) == _widths(wide)
    x = tiny_pixel_values(model)
    assert torch.equal(loaded(pixel_values=x).logits, wide(pixel_values=x).logits)
    for (n1, p1), (n2, p2) in zip(wide.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    expansion = loaded.config.hf_sparsify["expansions"][0]
    assert expansion["factor"] == 2 and expansion["after_step"] == 0
    assert all(new == 2 * old for old, new in expansion["widths"].values())


PLAIN_LOAD = """
import sys, transformers
transformers.logging.set_verbosity_error()
from transformers import AutoModelForImageClassification
try:
    AutoModelForImageClassification.from_pretrained(sys.argv[1], ignore_mismatched_sizes=True)
except Exception as err:
    print("FAILED", type(err).__name__)
    sys.exit(0)
print("LOADED")
"""


def test_plain_transformers_refuses_non_uniform_widths_and_loads_uniform_ones(tmp_path):
    model = make_tiny_model("vit")
    hf_sparsify.expand(model, ["vit.layers.1.mlp"], 2).save_pretrained(tmp_path / "mixed")
    assert json.loads((tmp_path / "mixed" / "config.json").read_text())["per_layer_config"] == {"1": {"intermediate_size": 128}}
    out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path / "mixed")], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("FAILED AmbiguousGlobalPerLayerAttributeError"), out.stdout + out.stderr

    uniform = hf_sparsify.expand(model, "all", 1.1)  # 64 -> 70 neurons in every block: the standard field holds it
    uniform.save_pretrained(tmp_path / "uniform")
    assert json.loads((tmp_path / "uniform" / "config.json").read_text())["intermediate_size"] == 70
    plain = AutoModelForImageClassification.from_pretrained(tmp_path / "uniform")
    x = tiny_pixel_values(model)
    assert torch.equal(plain(pixel_values=x).logits, uniform(pixel_values=x).logits)


def _new_unit_slices(model, dense):
    """(consumer columns, producer rows) of the units each group gained, by group."""
    out = {}
    for group in get_adapter(model).structure_groups():
        old = dense[group.name] * group.unit_size
        if group.num_units * group.unit_size == old:
            continue
        consumers = [model.get_submodule(n).weight[:, old:].detach().clone() for n in group.consumers]
        producers = [model.get_submodule(n).weight[old:].detach().clone() for n in group.producers]
        out[group.name] = (consumers, producers)
    return out


@pytest.mark.parametrize("family", ["vit", "dinov2_swiglu", "convnext", "convnextv2"])
def test_training_grows_the_new_units(family):
    model = make_tiny_model(family)
    dense = _widths(model)
    wide = hf_sparsify.expand(model, "all", 2, kinds=ALL_KINDS).train()
    start = _new_unit_slices(wide, dense)
    assert start and all(float(c.abs().max()) == 0 for consumers, _ in start.values() for c in consumers)
    optimizer = torch.optim.AdamW(wide.parameters(), lr=1e-2)
    for batch in tiny_batches(wide, num_batches=3) * 2:
        optimizer.zero_grad()
        loss = wide(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    after = _new_unit_slices(wide, dense)
    for name, (consumers, producers) in after.items():
        assert all(float(c.abs().max()) > 0 for c in consumers), f"{name}: the new units still write nothing"
        assert all(not torch.equal(p, p0) for p, p0 in zip(producers, start[name][1])), f"{name}: the new units' inputs did not change"
        assert all(torch.isfinite(p).all() for p in producers + consumers)


@pytest.mark.parametrize("family", ["vit", "dinov2_swiglu", "convnext", "convnextv2"])
def test_prune_after_expand(family, tmp_path):
    model = make_tiny_model(family)
    report_model = hf_sparsify.prune(model, hf_sparsify.VBPConfig(pruning_ratio=0.3, round_to=1, num_calibration_samples=8), tiny_batches(model))
    candidates = hf_sparsify.bottleneck_report(report_model).candidates(k=1)
    wide = hf_sparsify.expand(model, candidates, 2)
    pruned = hf_sparsify.prune(wide, hf_sparsify.VBPConfig(pruning_ratio=0.5, round_to=1, num_calibration_samples=8), tiny_batches(wide))
    assert pruned.pruning_result.layers[candidates[0].name]["dense_width"] == 2 * _widths(model)[candidates[0].name]
    # the dense reference stays the model before widening; the report ranks against the widths the pruning started from
    assert pruned.config.hf_sparsify["dense_widths"] == _widths(model)
    rows = hf_sparsify.bottleneck_report(pruned).rows
    assert {row.name: row.dense for row in rows} == {name: w for name, w in _widths(wide).items() if name in {row.name for row in rows}}
    assert next(row for row in rows if row.name == candidates[0].name).original == _widths(model)[candidates[0].name]
    pruned.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    x = tiny_pixel_values(model)
    assert torch.equal(loaded(pixel_values=x).logits, pruned(pixel_values=x).logits)
    assert "Widened ×2 by `hf_sparsify.expand` before any pruning" in (tmp_path / "README.md").read_text()


def test_expand_a_pruned_model_then_prune_again_records_the_order(tmp_path):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(pruning_ratio=0.3, round_to=1, num_calibration_samples=8), tiny_batches(model))
    wide = hf_sparsify.expand(pruned, hf_sparsify.bottleneck_report(pruned).candidates(k=1), 2)
    assert wide.pruning_config is pruned.pruning_config or wide.pruning_config.method == "vbp"  # the state travels
    again = hf_sparsify.prune(wide, hf_sparsify.VBPConfig(pruning_ratio=0.3, round_to=1, num_calibration_samples=8), tiny_batches(wide))
    assert again.config.hf_sparsify["expansions"][0]["after_step"] == 1
    again.save_pretrained(tmp_path)
    assert "Widened ×2 by `hf_sparsify.expand` after pruning step 1:" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["vit", "dinov2_swiglu", "convnextv2"])
def test_expand_every_dtype(family, dtype, tmp_path):
    model = make_tiny_model(family).to(dtype)
    x = tiny_pixel_values(model).to(dtype)
    wide = hf_sparsify.expand(model, "all", 2, kinds=ALL_KINDS)
    assert {p.dtype for p in wide.parameters()} == {dtype}
    reference = model(pixel_values=x).logits.float()
    torch.testing.assert_close(wide(pixel_values=x).logits.float(), reference, rtol=2e-2, atol=2e-2)
    # the existing weights are copied exactly, the new consumer columns are exact zeros
    for group in get_adapter(wide).structure_groups():
        old = _widths(model)[group.name] * group.unit_size
        for name in group.consumers:
            assert torch.equal(wide.get_submodule(name).weight[:, :old], model.get_submodule(name).weight)
            assert not wide.get_submodule(name).weight[:, old:].any()
    wide.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path, dtype=dtype)
    assert torch.equal(loaded(pixel_values=x).logits, wide(pixel_values=x).logits)


def test_heads_widen_with_the_attention_count():
    model = make_tiny_model("deit_teacher")
    wide = hf_sparsify.expand(model, ["deit.layers.0.attention"], 1.5)
    attention = wide.get_submodule("deit.layers.0.attention")
    assert attention.num_attention_heads == 6 and attention.q_proj.out_features == 6 * 8
    assert wide.config.hf_sparsify["per_layer_config"] == {"0": {"num_attention_heads": 6}}
    x = tiny_pixel_values(model)
    torch.testing.assert_close(wide(pixel_values=x).logits, model(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_layer_selection_forms():
    model = make_tiny_model("vit")
    by_index = hf_sparsify.expand(model, 1, 2)
    by_block = hf_sparsify.expand(model, "vit.layers.1", 2)
    by_name = hf_sparsify.expand(model, ["vit.layers.1.mlp"], 2)
    assert _widths(by_index) == _widths(by_block) == _widths(by_name)
    assert _widths(by_index)["vit.layers.1.attention"] == 4  # heads only when asked for
    assert _widths(hf_sparsify.expand(model, 1, 2, kinds=("mlp", "heads")))["vit.layers.1.attention"] == 8
    assert _widths(hf_sparsify.expand(model, "all", 1.1, round_to=8))["vit.layers.0.mlp"] == 72
    same = hf_sparsify.expand(model, "all", 1)  # factor 1: nothing changes
    assert _widths(same) == _widths(model) and "expansions" not in (getattr(same.config, "hf_sparsify", None) or {})
    inplace = copy.deepcopy(model)
    assert hf_sparsify.expand(inplace, 0, 2, inplace=True) is inplace


def test_new_units_are_seeded():
    model = make_tiny_model("vit")
    a, b, c = (hf_sparsify.expand(model, 0, 2, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.vit.layers[0].mlp.fc1.weight, b.vit.layers[0].mlp.fc1.weight)
    assert not torch.equal(a.vit.layers[0].mlp.fc1.weight, c.vit.layers[0].mlp.fc1.weight)
    scaled = hf_sparsify.expand(model, 0, 2, init_std=0.0)
    assert not scaled.vit.layers[0].mlp.fc1.weight[64:].any()


def test_bad_input_is_refused_clearly():
    model = make_tiny_model("vit")
    with pytest.raises(ExpansionError, match=r"'vit\.layer\.1\.mlp' is not a structure group or block of this model\. Did you mean 'vit\.layers\.1\.mlp'\?"):
        hf_sparsify.expand(model, ["vit.layer.1.mlp"], 2)
    with pytest.raises(ExpansionError, match=r"factor must be ≥ 1 \(2 gives twice the units\), got 0\.5: expand only widens; to remove units, prune"):
        hf_sparsify.expand(model, "all", 0.5)
    for factor in (float("nan"), True, "2"):
        with pytest.raises(ExpansionError, match="factor must be a number ≥ 1"):
            hf_sparsify.expand(model, "all", factor)
    with pytest.raises(ExpansionError, match=r"block index 7 is out of range: this model has 2 blocks \(0 to 1\)"):
        hf_sparsify.expand(model, 7, 2)
    with pytest.raises(ExpansionError, match="layers is empty"):
        hf_sparsify.expand(model, [], 2)
    with pytest.raises(ExpansionError, match="round_to must be a whole number ≥ 1"):
        hf_sparsify.expand(model, "all", 2, round_to=0)
    with pytest.raises(ExpansionError, match=r"factor 1\.1 adds no unit to vit\.layers\.0\.attention \(widths 4\): use a larger factor"):
        hf_sparsify.expand(model, ["vit.layers.0.attention"], 1.1)
    with pytest.raises(hf_sparsify.PruningConfigError, match="unknown structure kind"):
        hf_sparsify.expand(model, 0, 2, kinds=("neurons",))
    with pytest.raises(TypeError, match="expand takes a transformers model"):
        hf_sparsify.expand("vit", 0, 2)


def test_model_without_adapter_is_refused():
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    model = transformers.BertModel(config)
    with pytest.raises(UnsupportedModelError, match=r"BertModel \(model_type='bert'\) has no adapter: expand supports ViT, DeiT, DINOv2 and ConvNeXt\(V2\)"):
        hf_sparsify.expand(model, "all", 2)


def test_add_units_low_level():
    model = make_tiny_model("convnext")
    group = get_adapter(model).structure_groups()[0]
    assert group.kind == CONV_CHANNEL
    width = group.num_units
    assert add_units(model, group, 0).num_units == width
    with pytest.raises(ValueError, match="count must be ≥ 0"):
        add_units(model, group, -1)
    assert add_units(model, group, 3).num_units == width + 3
    assert model.get_submodule(group.producers[0]).out_features == width + 3
    assert widened_width(192, 2.0) == 384 and widened_width(192, 1.1) == 211 and widened_width(192, 1.1, 8) == 216


def test_grn_scales_are_rescaled_and_new_channels_start_silent():
    model = make_tiny_model("convnextv2")
    group = get_adapter(model).structure_groups()[0]
    grn = model.get_submodule(group.name).grn
    old_weight = grn.weight.detach().clone()
    width = group.num_units
    wide = copy.deepcopy(model)
    add_units(wide, get_adapter(wide).structure_groups()[0], width)
    new_grn = wide.get_submodule(group.name).grn
    torch.testing.assert_close(new_grn.weight[..., :width], old_weight / 2)
    assert not new_grn.weight[..., width:].any() and new_grn.bias[..., width:].abs().sum() > 0
    assert not wide.get_submodule(group.producers[0]).weight[width:].any()  # zero activations, zero spatial norms
