"""Every method on models in float32, bfloat16 and float16 (all run on this CPU with torch ≥ 2.13), with labels and
label-free (bare backbones, with the method's ``label_free_settings``), with and without mixed precision where the
method has it: the pruned model keeps its dtype, its outputs stay finite, and the method did prune."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hf_sparsify
from hf_sparsify.configuration import available_methods, get_method
from tests.conftest import make_tiny_model, tiny_batches, tiny_pixel_values

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FAMILIES = ["vit", "deit", "dinov2", "dinov2_swiglu", "convnext", "convnextv2"]
BACKBONES = ["vit", "dinov2", "convnext"]


def _run(method: str, family: str, dtype: torch.dtype, *, backbone: bool, extra: dict | None = None):
    entry = get_method(method)
    config_class = entry.config_class
    settings = dict(config_class.quick_settings)
    if backbone:
        if config_class.label_free_settings is None:
            pytest.skip(f"{method} cannot run without labels")
        settings.update(config_class.label_free_settings)
    settings.update(extra or {})
    model = make_tiny_model(family, backbone=backbone).to(dtype)
    batches = tiny_batches(model, num_batches=4, batch=4)  # float32 pixel values, as image processors give them
    if backbone:
        batches = [{"pixel_values": b["pixel_values"]} for b in batches]
    pruned = hf_sparsify.prune(model, config_class(**settings), batches if entry.pruner_class.needs_calibration_data else None)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    with torch.no_grad():
        out = pruned(pixel_values=tiny_pixel_values(model).to(dtype))
    values = out.logits if not backbone else out.last_hidden_state
    assert torch.isfinite(values.float()).all()
    report = hf_sparsify.sparsity_report(pruned)
    assert report.sparsity > 0 or any(s["units"] != s["dense_units"] for s in report.structures)
    return pruned


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", available_methods())
def test_every_method_in_every_dtype_with_labels(method, family, dtype):
    _run(method, family, dtype, backbone=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("method", available_methods())
def test_every_method_in_every_dtype_label_free(method, family, dtype):
    _run(method, family, dtype, backbone=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", [m for m in available_methods() if "mixed_precision" in {f.name for f in dataclasses.fields(get_method(m).config_class)}])
def test_mixed_precision_in_every_dtype(method, dtype):
    _run(method, "vit", dtype, backbone=False, extra={"mixed_precision": "bf16"})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("base", ["magnitude", "cap", "fastcap"])
def test_spdy_sparsity_levels_in_half_precision(base, dtype):
    """SPDY with per-layer sparsity levels (an unstructured base; not among the registered defaults above)."""
    extra = {"base_method": base, "round_to": None, "target_speedup": 1.3}
    if base != "magnitude":
        extra["base_settings"] = {"fisher_block_size": 16}
    pruned = _run("spdy", "vit", dtype, backbone=False, extra=extra)
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["measured_speedup"] >= 1.3 and hf_sparsify.sparsity_report(pruned).sparsity > 0
