"""Every registered method on the configurations of real Hub checkpoints (``tests/models/hub_configs.py``: DINOv3 ViT
and ConvNeXt, timm ViT / DeiT-distilled / DINOv2 / ConvNeXt through transformers' TimmWrapper, and transformers'
ViT, DeiT, DINOv2, ConvNeXt), at test size (fewer blocks, 32 px images: see that module), with random weights.

* prune with the method's ``quick_settings`` (and its ``label_free_settings`` on backbones: DINOv3, DINOv2,
  headless timm) → ``save_pretrained`` → one-call reload (``AutoSparseModelForImageClassification`` /
  ``AutoSparseModel``) with identical outputs. Unstructured methods that read calibration data (CAP, WoodFisher,
  FastCAP: their cost grows with the number of weights, a minute for ViT-Base's 768-wide blocks) prune the model's
  first prunable layer only (``targets=``), which runs their loss (labels, or label-free features) through the whole
  real-width model in seconds; magnitude and structured methods prune every layer the adapter lists;
* plain transformers (``AutoModel…from_pretrained``) loads unstructured checkpoints with identical outputs, and a
  structurally shrunk one either with identical outputs (widths a config field expresses) or not at all: it raises,
  never re-initialises silently;
* heads and MLP neurons (a test-only structured method, as SOSP will prune them) through the same round trip,
  including timm's fused ``qkv`` whose heads own three row ranges.

timm checkpoints need the optional extra (``pip install hf_sparsify[timm]``); without it they skip with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import torch
import transformers

import hf_sparsify
from hf_sparsify import PruningConfig
from hf_sparsify.adapters import ATTENTION_HEAD, get_adapter
from hf_sparsify.configuration import available_methods, get_method
from hf_sparsify.methods.base import PruningError
from hf_sparsify.structured import Allocation, Budget, StructuredPruner, resolve_kinds, unit_scores
from tests.models.hub_configs import CHECKPOINTS, build_model, image_batches, pixel_values

#: the checkpoints with attention heads (each once: not again with its backbone class)
TRANSFORMER_CHECKPOINTS = [name for name in CHECKPOINTS if "convnext" not in name and not name.endswith(("(backbone)", "(headless)"))]
#: known failures (strict: once fixed they fail the suite, so that this list shrinks); none at present
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _method_cases():
    for name in CHECKPOINTS:
        for method in available_methods():
            reason = KNOWN_FAILURES.get((method, name))
            marks = [pytest.mark.xfail(strict=True, raises=PruningError, reason=reason)] if reason else []
            yield pytest.param(name, method, marks=marks, id=f"{name}-{method}")


def outputs(model, pixels) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model.eval()(pixel_values=pixels)
    keys = ("logits",) if getattr(out, "logits", None) is not None else ("last_hidden_state", "pooler_output")
    return {k: getattr(out, k) for k in keys if getattr(out, k, None) is not None}


def assert_same_outputs(model, reference: dict[str, torch.Tensor], pixels, *, exact: bool = True) -> None:
    """Identical outputs (``exact``), or equal up to float rounding: plain transformers leaves weights at the 8-byte
    aligned addresses of the safetensors file, and some CPU kernels (timm ConvNeXt's 1x1 convolutions) round
    differently there; hf_sparsify's loaders realign them."""
    got = outputs(model, pixels)
    assert got.keys() == reference.keys()
    tolerance = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-5}
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], **tolerance, msg=key)


def loader_of(checkpoint):
    return hf_sparsify.AutoSparseModel if checkpoint.backbone else hf_sparsify.AutoSparseModelForImageClassification


def plain_loader_of(checkpoint):
    return transformers.AutoModel if checkpoint.backbone else transformers.AutoModelForImageClassification


def check_plain_transformers(checkpoint, folder, reference, pixels, *, shrunk: bool) -> None:
    """Plain transformers loads the checkpoint with identical outputs, or (shrunk checkpoints) raises."""
    try:
        plain = plain_loader_of(checkpoint).from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - any loud refusal is right; a silent re-initialisation is not
        assert shrunk, f"plain transformers could not load an unshrunk checkpoint: {type(err).__name__}: {err}"
        return
    assert type(plain).__name__ == checkpoint.model_class
    assert_same_outputs(plain, reference, pixels, exact=False)


def is_shrunk(model) -> bool:
    meta = getattr(model.config, "hf_sparsify", None) or {}
    return bool(meta.get("structured"))


@pytest.mark.parametrize("name, method", list(_method_cases()))
def test_every_method_prunes_saves_and_reloads_in_one_call(name, method, tmp_path):
    checkpoint = CHECKPOINTS[name]
    model = build_model(checkpoint)
    entry = get_method(method)
    settings = dict(entry.config_class.quick_settings)
    if checkpoint.backbone:
        if entry.config_class.label_free_settings is None:
            pytest.skip(f"{method} cannot run without labels")
        settings.update(entry.config_class.label_free_settings)
    if entry.pruner_class.needs_calibration_data and not entry.pruner_class.changes_shapes:
        first = get_adapter(model).prunable_layers()[0]
        settings["targets"] = [re.escape(first.name) + "$"]
    config = entry.config_class(**settings)
    data = image_batches(checkpoint) if entry.pruner_class.needs_calibration_data else None

    pruned = hf_sparsify.prune(model, config, data)
    pixels = pixel_values(checkpoint, seed=99)
    reference = outputs(pruned, pixels)
    assert all(torch.isfinite(v).all() for v in reference.values())
    report = hf_sparsify.sparsity_report(pruned)
    assert report.sparsity > 0 or any(s["units"] != s["dense_units"] for s in report.structures), f"{method} left {name} unchanged"

    folder = tmp_path / "pruned"
    pruned.save_pretrained(folder)
    reloaded = loader_of(checkpoint).from_pretrained(folder)
    assert type(reloaded) is type(model)
    assert_same_outputs(reloaded, reference, pixels)
    assert reloaded.pruning_config == config if not callable(getattr(config, "loss", None)) else True
    check_plain_transformers(checkpoint, folder, reference, pixels, shrunk=is_shrunk(pruned))


# ------------------------------------------------------------------------------------------------ heads
@dataclass(kw_only=True)
class _HeadsConfig(PruningConfig):
    """Test method: remove heads and MLP neurons whose consumer columns have the smallest norm."""

    pruning_ratio: float = field(default=0.4, metadata={"help": "fraction removed"})
    allocation: str = field(default="global", metadata={"help": "global or per_layer"})
    structures: list[str] = field(default_factory=lambda: ["heads", "mlp"], metadata={"help": "kinds pruned"})

    target_field = "pruning_ratio"


class _HeadsPruner(StructuredPruner):
    config_class = _HeadsConfig
    title = "test-heads"
    needs_calibration_data = False

    def kinds(self):
        return resolve_kinds(self.config.structures)

    def allocation(self):
        return Allocation(Budget(self.config.pruning_ratio, "units"), strategy=self.config.allocation, normalization="none", round_to=1)

    def score(self, model, adapter, groups, calibration, *, device, disable_tqdm, result):
        """Squared norms of the units' consumer columns, times 10 per block: a global allocation then prunes the
        first blocks most (so that blocks end with different widths)."""
        scores = {}
        for group in groups:
            columns = model.get_submodule(group.consumers[0]).weight.detach().double().flatten(1).square().sum(0)
            scores[group.name] = unit_scores(columns, group.unit_size) * 10.0**group.block_index
        return scores


@pytest.fixture
def heads_method():
    from hf_sparsify import configuration

    configuration.register_method("test-heads", _HeadsConfig, _HeadsPruner)
    yield "test-heads"
    configuration._METHODS.pop("test-heads", None)


@pytest.mark.parametrize(
    "allocation, structures",
    [("per_layer", ["heads", "mlp"]), ("global", ["heads"])],
    ids=["heads+mlp-same-width-per-block", "heads-global-width-per-block"],
)
@pytest.mark.parametrize("name", TRANSFORMER_CHECKPOINTS)
def test_heads_and_neurons_shrink_save_and_reload_in_one_call(name, allocation, structures, heads_method, tmp_path):
    checkpoint = CHECKPOINTS[name]
    model = build_model(checkpoint)
    pruned = hf_sparsify.prune(model, _HeadsConfig(pruning_ratio=0.4, allocation=allocation, structures=structures))
    heads = [g for g in get_adapter(pruned).structure_groups([ATTENTION_HEAD])]
    dense_heads = [g.num_units for g in get_adapter(model).structure_groups([ATTENTION_HEAD])]
    assert sum(g.num_units for g in heads) < sum(dense_heads)
    assert len({g.num_units for g in heads}) == (1 if allocation == "per_layer" else 2)
    pixels = pixel_values(checkpoint, seed=5)
    reference = outputs(pruned, pixels)

    folder = tmp_path / "heads"
    pruned.save_pretrained(folder)
    reloaded = loader_of(checkpoint).from_pretrained(folder)
    assert [g.num_units for g in get_adapter(reloaded).structure_groups([ATTENTION_HEAD])] == [g.num_units for g in heads]
    assert_same_outputs(reloaded, reference, pixels)
    check_plain_transformers(checkpoint, folder, reference, pixels, shrunk=True)


@pytest.mark.parametrize("name", ["facebook/dinov3-vits16-pretrain-lvd1689m", "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"])
def test_plain_transformers_refuses_pruned_heads_loudly(name, heads_method, tmp_path):
    """DINOv3's config derives head_dim from the head count, so pruned heads are written per layer and plain
    transformers refuses them even with ignore_mismatched_sizes=True; timm's wrapper has no width field: plain
    transformers stops with its size-mismatch error."""
    checkpoint = CHECKPOINTS[name]
    pruned = hf_sparsify.prune(build_model(checkpoint), _HeadsConfig(pruning_ratio=0.4, allocation="per_layer"))
    pruned.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="per-layer attribute|size mismatch|ignore_mismatched_sizes") as caught:
        plain_loader_of(checkpoint).from_pretrained(tmp_path)
    if checkpoint.library == "transformers":
        assert type(caught.value).__name__ == "AmbiguousGlobalPerLayerAttributeError"
        with pytest.raises(Exception, match="per-layer attribute"):
            plain_loader_of(checkpoint).from_pretrained(tmp_path, ignore_mismatched_sizes=True)


def test_uniform_dinov3_mlp_widths_set_intermediate_size_and_plain_transformers_loads(tmp_path):
    checkpoint = CHECKPOINTS["facebook/dinov3-vits16-pretrain-lvd1689m"]
    config = hf_sparsify.VBPConfig(pruning_ratio=0.5, allocation="per_layer", num_calibration_samples=8)
    pruned = hf_sparsify.prune(build_model(checkpoint), config, image_batches(checkpoint))
    assert pruned.config.intermediate_size == 768
    pixels = pixel_values(checkpoint, seed=7)
    reference = outputs(pruned, pixels)
    pruned.save_pretrained(tmp_path)
    assert_same_outputs(transformers.AutoModel.from_pretrained(tmp_path), reference, pixels, exact=False)
    assert_same_outputs(hf_sparsify.AutoSparseModel.from_pretrained(tmp_path), reference, pixels)


def test_the_cli_prunes_a_timm_checkpoint_folder(tmp_path):
    """``hf-sparsify prune`` on a timm checkpoint folder (config.json with the timm architecture and pretrained_cfg;
    TimmWrapper's image processor is built from it) and the one-call reload of its output."""
    from hf_sparsify.assets import DEMO_DATA_DIR
    from hf_sparsify.cli import main

    checkpoint = CHECKPOINTS["timm/convnext_atto.d2_in1k"]
    model = build_model(checkpoint)
    model.config.pretrained_cfg = {**model.config.pretrained_cfg, "input_size": [3, 32, 32], "crop_pct": 1.0}
    model.save_pretrained(tmp_path / "in")
    code = main(["prune", str(tmp_path / "in"), "--method", "vbp", "--sparsity", "0.3", "--num-calibration-samples", "8",
                 "--calibration", str(DEMO_DATA_DIR / "calibration.parquet"), "--output", str(tmp_path / "out"), "--disable-tqdm"])
    assert code == 0
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "out")
    assert type(reloaded).__name__ == "TimmWrapperForImageClassification" and reloaded.pruning_config.method == "vbp"
    assert any(s["units"] < s["dense_units"] for s in hf_sparsify.sparsity_report(reloaded).structures)
