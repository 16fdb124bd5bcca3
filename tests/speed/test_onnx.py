"""ONNX export: every family (classifiers and backbones) exports and runs in ONNX Runtime with PyTorch's outputs;
structured models with per-layer MLP widths and head counts (VBP on the MLPs, heads shrunk unevenly) export from
their saved folder; unstructured and 2:4 models export with the statement that dense kernels give no speed-up;
bad input is refused clearly."""

import json

import pytest
import torch
import transformers

import hf_sparsify
from hf_sparsify import UnsupportedModelError
from hf_sparsify.adapters import ATTENTION_HEAD, get_adapter
from hf_sparsify.speed import OnnxExportError, SpeedInputError, export_onnx, sync_head_counts
from hf_sparsify.speed.onnx import TOLERANCES, _ort_session
from hf_sparsify.structured import select_groups, shrink_group
from tests.conftest import TINY_FAMILIES, make_tiny_model, tiny_batches, tiny_pixel_values

ort = pytest.importorskip("onnxruntime", reason='pip install "hf_sparsify[onnx]"')
ATOL, RTOL = TOLERANCES[torch.float32]


def _onnx_outputs(path, names, x):
    session = _ort_session(path)
    return dict(zip(names, session.run(names, {"pixel_values": x.numpy()})))


def _assert_equal_to_pytorch(exported, model, batch=5, seed=7):
    """An independent check (another batch size and seed than export_onnx's own)."""
    x = tiny_pixel_values(model, batch, seed=seed)
    with torch.no_grad():
        reference = model(pixel_values=x)
    got = _onnx_outputs(exported.path, exported.output_names, x)
    for name in exported.output_names:
        torch.testing.assert_close(torch.from_numpy(got[name]), reference[name], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_every_family_exports_and_matches_pytorch(family, tmp_path):
    model = make_tiny_model(family)
    exported = export_onnx(model, tmp_path / "m.onnx")
    assert exported.verified and exported.max_abs_diff <= ATOL and exported.notes == []
    expected = ["logits", "cls_logits", "distillation_logits"] if family == "deit_teacher" else ["logits"]
    assert exported.output_names == expected
    _assert_equal_to_pytorch(exported, model)


@pytest.mark.parametrize("family", ["vit", "dinov2_swiglu", "convnextv2"])
def test_backbones_export_every_output(family, tmp_path):
    model = make_tiny_model(family, backbone=True)
    exported = export_onnx(model, tmp_path / "b.onnx")
    assert exported.output_names == ["last_hidden_state", "pooler_output"]
    _assert_equal_to_pytorch(exported, model)


def _prune_structured(family):
    """VBP on the MLPs (per-layer widths), then heads shrunk unevenly (3 of 4 heads in block 0, 1 in block 1)."""
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(pruning_ratio=0.4, round_to=1, num_calibration_samples=8), tiny_batches(model))
    heads = [g for g in select_groups(get_adapter(pruned), ["heads"], require_every_kind=False)] if "conv" not in family else []
    for group, keep in zip(heads, ([0, 2, 3], [1])):
        shrink_group(pruned, group, torch.tensor(keep))
    return pruned


@pytest.mark.parametrize("family", ["vit", "deit", "deit_teacher", "dinov2", "dinov2_swiglu", "dinov2_registers", "convnext", "convnextv2"])
def test_structured_models_export_from_their_folder_with_per_layer_widths_and_heads(family, tmp_path):
    pruned = _prune_structured(family)
    pruned.save_pretrained(tmp_path / "pruned")
    widths = sorted({g.num_units for g in get_adapter(pruned).structure_groups() if g.kind != ATTENTION_HEAD})
    assert len(widths) > 1 or "conv" in family  # per-layer MLP widths
    exported = export_onnx(tmp_path / "pruned", tmp_path / "onnx")
    assert exported.path == tmp_path / "onnx" / "model.onnx" and (tmp_path / "onnx" / "config.json").is_file()
    assert exported.verified and exported.notes == []
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "pruned").eval()
    if "conv" not in family:
        assert [g.num_units for g in get_adapter(reloaded).structure_groups([ATTENTION_HEAD])] == [3, 1]
    _assert_equal_to_pytorch(exported, reloaded)


def test_head_counts_are_brought_in_line_with_the_projections_and_inconsistent_shapes_refused(tmp_path):
    pruned = _prune_structured("vit")
    attention = pruned.get_submodule("vit.layers.1.attention")
    attention.num_attention_heads = 4  # stale: the projections hold 1 head
    assert sync_head_counts(pruned) == ["vit.layers.1.attention"] and attention.num_attention_heads == 1
    attention.num_attention_heads = 4
    exported = export_onnx(pruned, tmp_path / "m.onnx")
    assert attention.num_attention_heads == 4  # the given model is not changed; the export's copy was fixed
    _assert_equal_to_pytorch(exported, pruned)
    attention.k_proj = torch.nn.Linear(32, 16)  # k wider than q and v
    with pytest.raises(OnnxExportError, match="projections disagree"):
        export_onnx(pruned, tmp_path / "bad.onnx")


@pytest.mark.parametrize(
    "family, mask_structure, pattern",
    [(f, "unstructured", "unstructured sparsity") for f in ("vit", "deit", "dinov2", "convnext", "convnextv2")] + [("deit", "2:4", "2:4 semi-structured sparsity")],
)
def test_sparse_models_export_with_a_plain_statement_that_dense_kernels_give_no_speedup(family, mask_structure, pattern, tmp_path):
    pruned = hf_sparsify.prune(make_tiny_model(family), hf_sparsify.MagnitudeConfig(sparsity=0.5, mask_structure=mask_structure))
    exported = export_onnx(pruned, tmp_path / "s.onnx")
    assert exported.verified
    assert len(exported.notes) == 1 and pattern in exported.notes[0] and "no faster than the dense one" in exported.notes[0]
    _assert_equal_to_pytorch(exported, pruned)


def test_another_input_size_exports_with_interpolated_positions(tmp_path):
    model = make_tiny_model("vit")  # 16 px
    exported = export_onnx(model, tmp_path / "m.onnx", image_size=24)
    assert exported.verified and exported.image_size == 24
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        reference = model(pixel_values=x, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(torch.from_numpy(_onnx_outputs(exported.path, ["logits"], x)["logits"]), reference, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_exports(dtype, tmp_path):
    model = make_tiny_model("vit")
    exported = export_onnx(model, tmp_path / "h.onnx", dtype=dtype)
    assert exported.dtype == dtype and exported.path.is_file()
    assert exported.verified or any("not checked in ONNX Runtime" in n for n in exported.notes)
    assert next(model.parameters()).dtype == torch.float32  # the given model is not cast


def test_an_architecture_without_an_adapter_is_refused(tmp_path):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    with pytest.raises(UnsupportedModelError, match="ONNX export supports the model families .*ResNetForImageClassification .*torch.onnx.export"):
        export_onnx(transformers.ResNetForImageClassification(config).eval(), tmp_path / "r.onnx")
    assert not (tmp_path / "r.onnx").exists()


def test_an_existing_file_is_kept_without_overwrite(tmp_path):
    model = make_tiny_model("convnext")
    export_onnx(model, tmp_path / "m.onnx", verify=False)
    with pytest.raises(SpeedInputError, match="exists: pass overwrite=True"):
        export_onnx(model, tmp_path / "m.onnx")
    assert export_onnx(model, tmp_path / "m.onnx", overwrite=True).verified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left
