import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageClassification

import hf_sparsify
from hf_sparsify.adapters import ATTENTION_HEAD, get_adapter
from hf_sparsify.pruned import attach_pruning_state
from hf_sparsify.surgery import fold_into_bias, is_structured, keep_units, record_shapes, remove_units
from tests.conftest import make_tiny_model, tiny_pixel_values

EQUIVALENT = ["vit", "deit", "deit_teacher", "dinov2", "dinov2_swiglu", "dinov2_registers", "convnext"]


def _hand_shrink(model, seed=0, keep_fraction=0.5, uniform=False):
    """Remove units from every group (a different count per block unless ``uniform``)."""
    g = torch.Generator().manual_seed(seed)
    removed = {}
    for group in get_adapter(model).structure_groups():
        n = group.num_units
        k = max(1, int(n * keep_fraction) - (0 if uniform else group.block_index % 2))
        keep = torch.randperm(n, generator=g)[:k].sort().values
        removed[group.name] = sorted(set(range(n)) - set(keep.tolist()))
        keep_units(model, group, keep)
    return removed


def _zero_reference(model, removed):
    """The same model with the removed units' consumer columns zeroed (same function as removing them)."""
    for group in get_adapter(model).structure_groups():
        rows = group.unit_rows(torch.tensor(removed[group.name], dtype=torch.long))
        with torch.no_grad():
            for name in group.consumers:
                model.get_submodule(name).weight[:, rows] = 0
    return model


@pytest.mark.parametrize("family", EQUIVALENT)
def test_removing_units_equals_zeroing_their_outputs(family):
    model = make_tiny_model(family)
    x = tiny_pixel_values(model)
    shrunk = make_tiny_model(family)
    removed = _hand_shrink(shrunk)
    reference = _zero_reference(model, removed)
    torch.testing.assert_close(shrunk(pixel_values=x).logits, reference(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in reference.parameters())


def test_remove_units_updates_head_count():
    model = make_tiny_model("vit")
    attention = [g for g in get_adapter(model).structure_groups() if g.kind == ATTENTION_HEAD][0]
    remove_units(model, attention, torch.tensor([1, 3]))
    assert model.get_submodule(attention.name).num_attention_heads == 2
    assert model.get_submodule(attention.producers[0]).out_features == 2 * attention.unit_size


@pytest.mark.parametrize("family", sorted(["vit", "deit_teacher", "dinov2", "dinov2_swiglu", "dinov2_registers", "convnext", "convnextv2"]))
def test_structured_checkpoint_reloads_in_one_call(family, tmp_path):
    model = make_tiny_model(family)
    _hand_shrink(model)
    record_shapes(model)
    assert is_structured(model.config)
    attach_pruning_state(model)
    model.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    x = tiny_pixel_values(model)
    assert torch.equal(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    # saving the reloaded model again gives the same checkpoint
    loaded.save_pretrained(tmp_path / "again")
    again = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "again")
    assert torch.equal(again(pixel_values=x).logits, model(pixel_values=x).logits)


PLAIN_LOAD = """
import sys, transformers
transformers.logging.set_verbosity_error()
from transformers import AutoModelForImageClassification
try:
    AutoModelForImageClassification.from_pretrained(sys.argv[1], ignore_mismatched_sizes=sys.argv[2] == "1")
except Exception as err:
    print("FAILED", type(err).__name__, str(err)[:300])
    sys.exit(0)
print("LOADED")
"""


@pytest.mark.parametrize("family", ["vit", "dinov2", "convnext"])
def test_plain_transformers_fails_loudly_on_non_uniform_widths(family, tmp_path):
    model = make_tiny_model(family)
    _hand_shrink(model)
    attach_pruning_state(model)
    model.pruning_structured = True
    model.save_pretrained(tmp_path)
    out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path), "0"], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("FAILED"), out.stdout + out.stderr
    if family == "vit":
        # ViT/DeiT widths and head counts are expressible as per_layer_config: plain transformers refuses even with
        # ignore_mismatched_sizes (ConvNeXt channels and most DINOv2 widths have no config field: see shapes.py)
        config = json.loads((tmp_path / "config.json").read_text())
        assert config["per_layer_config"]
        out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path), "1"], capture_output=True, text=True, timeout=120)
        assert out.stdout.startswith("FAILED AmbiguousGlobalPerLayerAttributeError"), out.stdout + out.stderr


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2"])  # dinov2: 64 -> 32 = 1 x hidden, expressible
def test_uniform_widths_set_the_standard_field_and_plain_transformers_loads(family, tmp_path):
    model = make_tiny_model(family)
    _hand_shrink(model, uniform=True)
    record_shapes(model)
    attach_pruning_state(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "per_layer_config" not in config
    assert config["num_attention_heads"] == 2 and config["head_dim"] == 8
    plain = AutoModelForImageClassification.from_pretrained(tmp_path)
    x = tiny_pixel_values(model)
    assert torch.equal(plain(pixel_values=x).logits, model(pixel_values=x).logits)


def test_fold_into_bias_creates_and_updates_bias():
    model = make_tiny_model("vit")
    group = [g for g in get_adapter(model).structure_groups() if g.kind != ATTENTION_HEAD][0]
    fc2 = model.get_submodule(group.consumers[0])
    fc2.bias = None
    units = torch.tensor([0, 5])
    values = torch.tensor([1.5, -2.0])
    expected = fc2.weight[:, 0] * 1.5 - 2.0 * fc2.weight[:, 5]
    fold_into_bias(model, group, units, values)
    torch.testing.assert_close(model.get_submodule(group.consumers[0]).bias, expected)


def test_fold_refused_for_grn():
    model = make_tiny_model("convnextv2")
    group = get_adapter(model).structure_groups()[0]
    with pytest.raises(ValueError, match="GRN"):
        fold_into_bias(model, group, torch.tensor([0]), torch.tensor([1.0]))


def test_corrupted_shape_record_is_an_error(tmp_path):
    model = make_tiny_model("vit")
    _hand_shrink(model)
    attach_pruning_state(model)
    model.pruning_structured = True
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    name = next(iter(config["hf_sparsify"]["module_shapes"]))
    config["hf_sparsify"]["module_shapes"][name]["out_features"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="size|shape|mismatch"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
