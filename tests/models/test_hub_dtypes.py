"""Every method on the new families (DINOv3 ViT and ConvNeXt backbones, timm's ViT and ConvNeXt through the wrapper,
headless and with a head) in float32, bfloat16 and float16 (tiny models): the pruned model keeps its dtype, its
outputs stay finite, the method pruned, and the one-call reload gives the same outputs."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

import hf_sparsify
from hf_sparsify.configuration import available_methods, get_method
from tests.adapters.test_dinov3 import make_dinov3
from tests.models.hub_configs import timm_skip_reason

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODELS = ["dinov3_vit", "dinov3_vit_gated", "dinov3_convnext", "timm_vit_headless", "timm_vit", "timm_convnext"]
#: the gradient engine (hf_sparsify/observers/gradients.py) casts calibration batches to the model's dtype and backs a
#: half-precision loss up in float32; without it, CAP-family methods fail in half precision on models that do not
#: cast their input themselves (DINOv3 ConvNeXt) and on classifiers whose loss stays in half precision (timm's)
ENGINE = importlib.util.find_spec("hf_sparsify.observers.gradients") is not None
_NEEDS_ENGINE = {"dinov3_convnext", "timm_vit", "timm_convnext"}


def _cases():
    for method in available_methods():
        for name in MODELS:
            for dtype in DTYPES:
                fisher = "loss" in {f.name for f in dataclasses.fields(get_method(method).config_class)}
                marks = []
                if fisher and dtype != torch.float32 and name in _NEEDS_ENGINE and not ENGINE:
                    marks = [pytest.mark.xfail(strict=True, reason="half-precision gradients need the gradient engine (branch 'engine')")]
                yield pytest.param(method, name, dtype, marks=marks, id=f"{method}-{name}-{str(dtype).removeprefix('torch.')}")


def make(name: str):
    if name.startswith("dinov3"):
        return make_dinov3(name.removeprefix("dinov3_"))
    reason = timm_skip_reason()
    if reason:
        pytest.skip(reason)
    from tests.adapters.test_timm import make_timm

    variant = {"timm_vit_headless": "vit", "timm_vit": "vit_dinov2_packed_swiglu", "timm_convnext": "convnext_conv_mlp"}[name]
    return make_timm(variant, headless=name.endswith("headless"))


def _outputs(model, x):
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("method, name, dtype", list(_cases()))
def test_every_method_in_every_dtype(method, name, dtype, tmp_path):
    # loaded in the dtype as users load a checkpoint (DINOv3's RoPE frequencies stay float32 then, as in the reload)
    dense = make(name)
    dense.save_pretrained(tmp_path / "dense")
    model = type(dense).from_pretrained(tmp_path / "dense", dtype=dtype).eval()
    backbone = type(model).__name__.endswith("Model")  # DINOv3ViTModel, DINOv3ConvNextModel, TimmWrapperModel
    entry = get_method(method)
    settings = dict(entry.config_class.quick_settings)
    if backbone:
        if entry.config_class.label_free_settings is None:
            pytest.skip(f"{method} cannot run without labels")
        settings.update(entry.config_class.label_free_settings)
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(2, 3, 32, 32, generator=g)} for _ in range(4)]  # grad_batch_size 2
    if not backbone:
        for batch in batches:
            batch["labels"] = torch.randint(0, 5, (2,), generator=g)
    pruned = hf_sparsify.prune(model, entry.config_class(**settings), batches if entry.pruner_class.needs_calibration_data else None)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    x = batches[0]["pixel_values"].to(dtype)
    expected = _outputs(pruned, x)
    assert torch.isfinite(expected.float()).all()
    report = hf_sparsify.sparsity_report(pruned)
    assert report.sparsity > 0 or any(s["units"] != s["dense_units"] for s in report.structures)
    pruned.save_pretrained(tmp_path / "pruned")
    loader = hf_sparsify.AutoSparseModel if backbone else hf_sparsify.AutoSparseModelForImageClassification
    reloaded = loader.from_pretrained(tmp_path / "pruned")
    assert {p.dtype for p in reloaded.parameters()} == {dtype}
    torch.testing.assert_close(_outputs(reloaded.eval(), x), expected, rtol=0, atol=0)
