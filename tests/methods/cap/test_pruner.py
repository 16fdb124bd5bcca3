"""CAP, WoodFisher and FastCAP through ``hf_sparsify.prune``: the whole pipeline equals the oracles on a tiny
model, every family prunes, label-free backbones, recomputations, layer streaming, save/reload and the report."""

import numpy as np
import pytest
import torch

import hf_sparsify
from hf_sparsify import AutoSparseModelForImageClassification, CAPConfig, FastCAPConfig, PruningConfig, WoodFisherConfig
from hf_sparsify.adapters import get_adapter
from hf_sparsify.configuration import get_method
from hf_sparsify.observers.fisher import BlockLayout
from tests import oracles
from tests.conftest import make_tiny_model, tiny_batches, tiny_pixel_values
from tests.methods.cap.helpers import rel_err

TARGETS = [r"layers\.0\.mlp\.fc1$", r"layers\.1\.attention\.q_proj$", r"layers\.1\.mlp\.fc2$"]
DAMP = 1e-4


def _layers(model, config):
    return get_adapter(model).select_layers(config.targets, config.ignore)


def _oracle_inputs(model, config, batches):
    """Per target: (weights as blocks, damped Fisher blocks) from explicit masked per-batch gradients."""
    layers = _layers(model, config)
    multiple = config.nm[1] if config.nm else 1
    layouts = [BlockLayout.for_weight(l.weight, config.fisher_block_size, multiple_of=multiple) for l in layers]
    grads = [[] for _ in layers]
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for i, (layer, layout) in enumerate(zip(layers, layouts)):
            grads[i].append(layout.to_blocks(layer.weight.grad * (layer.weight != 0)).double().numpy())
    model.zero_grad()
    out = []
    for layer, layout, g in zip(layers, layouts, grads):
        g = np.stack(g)
        w = layout.to_blocks(layer.weight.detach()).double().numpy()
        fishers = np.stack([oracles.damped_fisher(g[:, b], 0.0) for b in range(w.shape[0])])
        # N:M: the extra dampening relative to the layer's mean diagonal (issue 17.5)
        extra = getattr(config, "nm_damp", 0.0) * float(np.mean(np.diagonal(fishers, axis1=1, axis2=2))) if config.nm else 0.0
        out.append((w, fishers + (config.damp + extra) * np.eye(w.shape[1]), layout))
    return out


def _check_against(pruned, model, config, expected_blocks, inputs, tol=1e-5):
    for layer, expected, (_, _, layout) in zip(_layers(pruned, config), expected_blocks, inputs):
        got = layout.to_blocks(layer.weight.detach()).double().numpy()
        assert rel_err(got, expected) < tol, layer.name
        assert np.array_equal(got == 0, expected == 0), layer.name


@pytest.fixture(scope="module")
def case():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=24, batch=2)
    return model, batches


@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_cap_pipeline_equals_the_oracle(case, distribution):
    model, batches = case
    config = CAPConfig(sparsity=0.6, sparsity_distribution=distribution, targets=TARGETS, fisher_block_size=24, num_grads=24, damp=DAMP, fisher_dtype="float64")
    pruned = hf_sparsify.prune(model, config, batches)
    inputs = _oracle_inputs(model, config, batches)
    total = sum(w.size for w, _, _ in inputs)
    k = round(0.6 * total) if distribution == "global" else [round(0.6 * w.size) for w, _, _ in inputs]
    expected = oracles.cap_prune_layers([(w, f) for w, f, _ in inputs], k)
    _check_against(pruned, model, config, expected, inputs)
    # the divisor rule: 24 does not divide 1024 or 2048; the smallest divisor ≥ 24 is 32, and it is reported
    result = pruned.pruning_result
    assert {v["fisher_block_size"] for v in result.layers.values()} == {32}
    assert result.info["block_sizes_changed"] and result.info["num_grads"] == 24
    assert set(result.timings) >= {"gradients", "fisher", "inverse", "elimination", "selection", "update"}
    if distribution == "global":
        assert len({round(v["sparsity"], 3) for v in result.layers.values()}) > 1 and result.info["threshold"] > 0


def test_cap_nm_pipeline_equals_the_oracle(case):
    model, batches = case
    config = CAPConfig(sparsity=0.5, mask_structure="2:4", targets=TARGETS, fisher_block_size=16, num_grads=24, damp=DAMP, fisher_dtype="float64")
    pruned = hf_sparsify.prune(model, config, batches)
    inputs = _oracle_inputs(model, config, batches)
    expected = oracles.cap_prune_layers([(w, f) for w, f, _ in inputs], 0, nm=(4, 2))
    _check_against(pruned, model, config, expected, inputs)
    for layer in _layers(pruned, config):
        assert ((layer.weight != 0).reshape(-1, 4).sum(1) <= 2).all()


def test_cap_nm_without_relative_damping_equals_the_oracle_with_damp_alone(case):
    # nm_damp=0 keeps the behaviour before issue 17.5 reachable; the default (3e-2) adds 3e-2·mean(diag)
    model, batches = case
    config = CAPConfig(sparsity=0.5, mask_structure="2:4", targets=TARGETS, fisher_block_size=16, num_grads=24, damp=DAMP, nm_damp=0.0)
    pruned = hf_sparsify.prune(model, config, batches)
    inputs = _oracle_inputs(model, config, batches)
    expected = oracles.cap_prune_layers([(w, f) for w, f, _ in inputs], 0, nm=(4, 2))
    _check_against(pruned, model, config, expected, inputs)
    default = hf_sparsify.prune(model, config.replace(nm_damp=CAPConfig().nm_damp), batches)
    assert default.pruning_result.info["nm_damp"] == 3e-2
    assert any(not torch.equal(a.weight, b.weight) for a, b in zip(_layers(pruned, config), _layers(default, config)))


def test_woodfisher_pipeline_equals_the_oracle(case):
    model, batches = case
    config = WoodFisherConfig(sparsity=0.5, targets=TARGETS, fisher_block_size=32, num_grads=24, damp=DAMP, fisher_dtype="float64")
    pruned = hf_sparsify.prune(model, config, batches)
    inputs = _oracle_inputs(model, config, batches)
    expected = oracles.woodfisher_prune_layers([(w, f) for w, f, _ in inputs], round(0.5 * sum(w.size for w, _, _ in inputs)))
    _check_against(pruned, model, config, expected, inputs)


def test_fastcap_pipeline_equals_the_oracle(case):
    model, batches = case
    config = FastCAPConfig(sparsity=0.5, targets=TARGETS, fisher_block_size=32, num_grads=24)
    pruned = hf_sparsify.prune(model, config, batches)
    layers = _layers(model, config)
    grads = {l.name: [] for l in layers}
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for l in layers:
            grads[l.name].append(l.weight.grad.reshape(-1, 32).double().numpy())
    model.zero_grad()
    for layer, new in zip(layers, _layers(pruned, config)):
        g = np.stack(grads[layer.name])
        expected = oracles.fastcap_prune(layer.weight.detach().reshape(-1, 32).double().numpy(), np.einsum("mrb,mrc->bc", g, g), 24, 0.5, config.damp)
        # the shared Fisher is accumulated in float64 (float32 before: 1e-4)
        assert rel_err(new.weight.detach().reshape(-1, 32).numpy(), expected) < 1e-6
        assert np.array_equal(new.weight.detach().reshape(-1, 32).numpy() == 0, expected == 0)
        assert (new.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_recomputations_re_estimate_the_fisher_at_the_pruned_weights(case):
    model, batches = case
    config = CAPConfig(sparsity=0.6, num_recomputations=2, targets=TARGETS, fisher_block_size=32, num_grads=12, damp=DAMP, fisher_dtype="float64")
    pruned = hf_sparsify.prune(model, config, batches)
    # oracle: 30% with the first 12 batches, then 60% with the next 12 at the pruned weights
    step = hf_sparsify.prune(model, config.replace(sparsity=0.3, num_recomputations=1), batches[:12])
    inputs = _oracle_inputs(step, config, batches[12:])
    total = sum(w.size for w, _, _ in inputs)
    expected = oracles.cap_prune_layers([(w, f) for w, f, _ in inputs], round(0.6 * total))
    _check_against(pruned, model, config, expected, inputs)
    assert pruned.pruning_result.info["gradient_passes"] == 2


@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_layer_streaming_gives_the_same_model(case, distribution):
    model, batches = case
    config = CAPConfig(sparsity=0.6, sparsity_distribution=distribution, fisher_block_size=32, num_grads=4, damp=DAMP, fisher_dtype="float64")
    whole = hf_sparsify.prune(model, config, batches)
    streamed = hf_sparsify.prune(model, config.replace(max_fisher_memory_gb=0.0006), batches)  # ~ 2 layers per group
    info = streamed.pruning_result.info
    assert info["fisher_groups"] > 2
    assert info["gradient_passes"] == info["fisher_groups"] * (2 if distribution == "global" else 1)
    for (name, a), b in zip(whole.state_dict().items(), streamed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_float32_fisher_gives_the_masks_of_float64_at_a_larger_damp(case):
    # float32 blocks are exact enough when damp dominates their rounding (at the default 1e-8 they are not:
    # test_the_defaults_equal_the_float64_oracle_at_the_default_damp)
    model, batches = case
    config = CAPConfig(sparsity=0.7, fisher_block_size=32, num_grads=24, damp=DAMP)
    single = hf_sparsify.prune(model, config.replace(fisher_dtype="float32"), batches)
    double = hf_sparsify.prune(model, config, batches)
    for layer, other in zip(_layers(single, config), _layers(double, config)):
        assert torch.equal(layer.weight == 0, other.weight == 0)
        torch.testing.assert_close(layer.weight, other.weight, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2", "dinov2_swiglu", "dinov2_registers", "convnext", "convnextv2"])
@pytest.mark.parametrize("config", [
    CAPConfig(sparsity=0.6, fisher_block_size=16, num_grads=4),
    CAPConfig(sparsity=0.5, mask_structure="2:4", fisher_block_size=16, num_grads=4),
    WoodFisherConfig(sparsity=0.6, sparsity_distribution="uniform", fisher_block_size=16, num_grads=4),
    FastCAPConfig(sparsity=0.6, fisher_block_size=16, num_grads=4),
], ids=["cap", "cap-2:4", "woodfisher", "fastcap"])  # fmt: skip
def test_every_family_prunes(family, config):
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, config, tiny_batches(model, num_batches=4))
    layers = get_adapter(pruned).prunable_layers()
    zeros = sum(int((l.weight == 0).sum()) for l in layers)
    total = sum(l.numel for l in layers)
    if config.nm is not None:
        for layer in layers:
            w = layer.weight
            groups = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(-1, 4)
            assert ((groups != 0).sum(1) <= 2).all(), layer.name
    elif config.method == "cap":
        assert zeros == round(0.6 * total)
    else:
        for layer in layers:
            assert (layer.weight == 0).float().mean().item() == pytest.approx(0.6, abs=2 / layer.numel)
    assert torch.isfinite(pruned(pixel_values=tiny_pixel_values(pruned)).logits).all()
    assert hf_sparsify.sparsity_report(pruned).sparsity > 0.4


def test_dinov2_backbone_prunes_with_the_label_free_fisher():
    model = make_tiny_model("dinov2", backbone=True)
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model, 4)]
    for config in (CAPConfig(sparsity=0.5, loss="features", fisher_block_size=16, num_grads=8), FastCAPConfig(sparsity=0.5, loss="features", fisher_block_size=16, num_grads=8)):
        pruned = hf_sparsify.prune(model, config, batches)
        assert hf_sparsify.sparsity_report(pruned).sparsity == pytest.approx(0.5, abs=0.01)
        assert pruned.pruning_result.info["loss"] == "features"
        assert torch.isfinite(pruned(pixel_values=batches[0]["pixel_values"]).last_hidden_state).all()


def test_custom_loss_function_and_its_saved_config(tmp_path):
    model = make_tiny_model("convnext")
    loss = lambda m, batch: m(pixel_values=batch["pixel_values"]).logits.logsumexp(-1).mean()  # noqa: E731
    config = CAPConfig(sparsity=0.5, loss=loss, fisher_block_size=16, num_grads=4)
    pruned = hf_sparsify.prune(model, config, [{"pixel_values": tiny_pixel_values(model)}])
    assert hf_sparsify.sparsity_report(pruned).sparsity == pytest.approx(0.5, abs=0.01)
    pruned.save_pretrained(tmp_path)
    saved = PruningConfig.from_pretrained(tmp_path)
    assert saved.loss == "custom"
    with pytest.raises(hf_sparsify.PruningConfigError, match="custom loss function.*replace\\(loss="):
        hf_sparsify.prune(model, saved, [{"pixel_values": tiny_pixel_values(model)}])


def test_save_reload_and_report(tmp_path, case):
    model, batches = case
    config = CAPConfig(sparsity=0.7, fisher_block_size=32, num_grads=8)
    pruned = hf_sparsify.prune(model, config, batches)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    for (name, a), b in zip(pruned.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert PruningConfig.from_pretrained(tmp_path) == config
    summary = __import__("json").loads((tmp_path / "sparsity_summary.json").read_text())
    assert summary["pruning"]["method"] == "cap" and summary["pruning"]["info"]["num_grads"] == 8
    report = hf_sparsify.sparsity_report(reloaded)
    layers = get_adapter(reloaded).prunable_layers()
    expected = sum(int((l.weight == 0).sum()) for l in layers) / sum(l.numel for l in layers)
    assert expected == pytest.approx(0.7, abs=1e-4)
    assert report.sparsity > 0.5


def test_extra_dampening_rescues_rounding_in_a_rank_deficient_fisher(case):
    # sums of 2 gradients in 64-weight blocks with damp=1e-30, far below float64's rounding of the sums: the
    # Cholesky fails for some blocks; they are retried with relative dampening and reported
    model, batches = case
    config = CAPConfig(sparsity=0.5, fisher_block_size=64, num_grads=2, damp=1e-30, targets=TARGETS)
    pruned = hf_sparsify.prune(model, config, batches)
    redamped = [v.get("redamped_blocks", 0) for v in pruned.pruning_result.layers.values()]
    assert sum(redamped) > 0
    assert hf_sparsify.sparsity_report(pruned).sparsity > 0


# ------------------------------------------------------------------------------------------ precise defaults
@pytest.mark.parametrize("method", ["cap", "woodfisher"])
def test_the_defaults_equal_the_float64_oracle_at_the_default_damp(case, method):
    # issue 12.3: with float32 Fisher blocks, damp=1e-8 and rank-deficient blocks (24 gradients, B = 32), masks
    # differed from the float64 result; the defaults now store float64 blocks
    model, batches = case
    cls = CAPConfig if method == "cap" else WoodFisherConfig
    config = cls(sparsity=0.6, targets=TARGETS, fisher_block_size=32, num_grads=24)
    assert config.damp == 1e-8
    pruned = hf_sparsify.prune(model, config, batches)
    inputs = _oracle_inputs(model, config, batches)
    k = round(0.6 * sum(w.size for w, _, _ in inputs))
    layers = [(w, f) for w, f, _ in inputs]
    expected = oracles.cap_prune_layers(layers, k) if method == "cap" else oracles.woodfisher_prune_layers(layers, k)
    _check_against(pruned, model, config, expected, inputs, tol=1e-6)
    assert pruned.pruning_result.info["fisher_dtype"] == "float64"


def test_near_tied_saliencies_are_ranked_in_float64():
    # issue 12.2 through the pipeline: a loss whose gradients are one-hot directions gives every block the same
    # Fisher (I/16 + damp), so the scores are proportional to w²; two weights 1e-12 apart must not tie
    model = make_tiny_model("vit").double()
    name = "vit.layers.0.mlp.fc1"
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.weight.copy_(2.0 + torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        layer.weight[0, 0] = 1.0 + 1e-12  # block 0
        layer.weight[0, 16] = 1.0  # block 1: lower by 1e-12, so it goes first
    directions = []
    for j in range(16):
        d = torch.zeros(layer.weight.numel(), dtype=torch.float64)
        d[j::16] = 1.0
        directions.append(d.reshape(layer.weight.shape))
    batches = [{"pixel_values": tiny_pixel_values(model, 1), "direction": d} for d in directions]
    loss = lambda m, batch: (m.get_submodule(name).weight * batch["direction"]).sum()  # noqa: E731
    for cls in (CAPConfig, WoodFisherConfig):
        config = cls(sparsity=1 / layer.weight.numel(), targets=[r"layers\.0\.mlp\.fc1$"], fisher_block_size=16, num_grads=16, loss=loss)
        pruned = hf_sparsify.prune(model, config, batches).get_submodule(name).weight
        assert pruned[0, 16] == 0 and pruned[0, 0] != 0, cls.__name__
        assert int((pruned == 0).sum()) == 1


# ------------------------------------------------------------------------------------------ calibration data
class _CountingProcessor:
    def __init__(self):
        self.images = 0

    def __call__(self, images, return_tensors="pt"):
        self.images += len(images)
        return {"pixel_values": torch.stack([torch.as_tensor(np.array(i), dtype=torch.float32).permute(2, 0, 1) / 255 for i in images])}


def _image_dataset(rows=64, size=16, num_labels=5):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(rows)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_labels)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % num_labels for i in range(rows)]}, features=features)


def test_recomputations_build_each_calibration_batch_once():
    # issue 11.3: step k used to regenerate and discard the batches of steps 0..k-1 (quadratic preprocessing)
    model = make_tiny_model("vit")
    processor = _CountingProcessor()
    config = CAPConfig(sparsity=0.6, num_recomputations=3, fisher_block_size=32, num_grads=4, grad_batch_size=2, damp=DAMP)
    pruned = hf_sparsify.prune(model, config, _image_dataset(), image_processor=processor)
    assert processor.images == 3 * 4 * 2
    info = pruned.pruning_result.info
    assert info["gradient_passes"] == 3 and info["num_calibration_samples"] == 24 and info["num_grads"] == 4
    # layer streaming collects the same batches twice per group: built again, but counted once
    processor.images = 0
    streamed = hf_sparsify.prune(model, config.replace(num_recomputations=1, max_fisher_memory_gb=0.0006), _image_dataset(), image_processor=processor)
    info = streamed.pruning_result.info
    assert info["fisher_groups"] > 2 and info["num_calibration_samples"] == 8
    assert processor.images == info["gradient_passes"] * 8


def test_a_dataloader_that_cannot_follow_grad_batch_size_is_refused():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=6, batch=2)
    loader = torch.utils.data.DataLoader(
        [(b["pixel_values"][i], b["labels"][i]) for b in batches for i in range(2)], batch_size=3
    )  # fmt: skip
    with pytest.raises(hf_sparsify.CalibrationDataError, match=r"grad_batch_size=4 .* batches of 3 .* batch_size=4"):
        hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=2, grad_batch_size=4), loader)
    with pytest.raises(hf_sparsify.CalibrationDataError, match=r"batches of 2 that cannot be re-batched"):
        hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=2, grad_batch_size=4), batches)
    # without grad_batch_size the loader's own batches are used, and the result counts their images
    pruned = hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=3), loader)
    assert pruned.pruning_result.info["num_grads"] == 3 and pruned.pruning_result.info["num_calibration_samples"] == 9
    pruned = hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=3, grad_batch_size=3), loader)
    assert pruned.pruning_result.info["num_calibration_samples"] == 9


# ------------------------------------------------------------------------------------------ plan and memory
def test_plan_says_what_the_run_will_do():
    model = make_tiny_model("vit")
    adapter = get_adapter(model)
    cap = get_method("cap").pruner_class(CAPConfig(sparsity=0.7, fisher_block_size=16, num_grads=1024, grad_batch_size=32))
    lines = cap.plan(model, adapter)
    assert lines[0].startswith("cap: 12 layers, 16,384 weights")
    assert lines[1] == "gradients: 1,024 × 32 images = 32,768 images per step × 1 step; 1 gradient pass, 1,024 forward/backward passes"
    assert lines[2].startswith("Fisher blocks: 2.0 MiB (float64) on cpu")  # 16,384 weights × 16 × 8 bytes
    streamed = get_method("cap").pruner_class(CAPConfig(fisher_block_size=16, num_grads=8, max_fisher_memory_gb=0.0006, num_recomputations=2))
    lines = streamed.plan(model, adapter)
    assert "× 2 steps; 16 gradient passes, 128 forward/backward passes" in lines[1] and "in 4 groups of ≤" in lines[2]
    fastcap = get_method("fastcap").pruner_class(FastCAPConfig(fisher_block_size=16, num_grads=8))
    assert "shared Fisher (one B×B per layer): 24.0 KiB (float64)" in fastcap.plan(model, adapter)[2]


def test_a_fisher_store_that_does_not_fit_is_refused_before_any_gradient():
    # a ViT with 2^20-weight layers and blocks of one whole layer: d·B·8 bytes is terabytes
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(hidden_size=1024, num_hidden_layers=1, num_attention_heads=4, intermediate_size=1024, image_size=8, patch_size=8, num_labels=2)).eval()
    config = CAPConfig(fisher_block_size=1 << 20, num_grads=1)

    class NoBatch:  # a re-iterable source that fails if any batch is read after the label check
        def __init__(self):
            self.reads = 0

        def __iter__(self):
            self.reads += 1
            if self.reads > 1:
                raise AssertionError("a gradient batch was drawn")
            yield {"pixel_values": torch.zeros(1, 3, 8, 8), "labels": torch.zeros(1, dtype=torch.long)}

    with pytest.raises(hf_sparsify.PruningError, match=r"needs \d+\.\d TiB of Fisher blocks \(float64.*available.*smaller fisher_block_size"):
        hf_sparsify.prune(model, config, NoBatch(), inplace=True)
    pruner = get_method("cap").pruner_class(config)
    with pytest.raises(hf_sparsify.PruningError, match="TiB of Fisher blocks"):
        pruner.plan(model, get_adapter(model))
    # when every layer fits alone, the message gives the layer-streaming setting that fits
    small = get_method("cap").pruner_class(CAPConfig(fisher_block_size=192))
    targets = small._targets(get_adapter(model).select_layers())
    message = small._too_large_message(64 << 30, 8 << 30, 256 << 20, torch.device("cpu"), targets)
    assert "max_fisher_memory_gb=6.9 (layer streaming: " in message and "groups of layers" in message
    assert "fisher_dtype='float32'" in message and "FastCAP" in message


def test_a_store_too_large_for_the_device_is_refused_with_a_streaming_setting_that_then_fits(monkeypatch):
    # issue 17 (bad input): the device's free memory is set below the whole store but above its largest layer (the
    # free memory of a real device cannot be chosen in a test); the suggested max_fisher_memory_gb then runs
    import re

    from hf_sparsify.methods.cap import pruner as pruner_module
    from hf_sparsify.utils import workspace_bytes

    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=2, batch=2)
    calls = []

    def counting_loss(m, batch):
        calls.append(1)
        return m(**batch).loss

    config = CAPConfig(fisher_block_size=16, num_grads=2, loss=counting_loss)
    adapter = get_adapter(model)
    targets = get_method("cap").pruner_class(config)._targets(adapter.select_layers())
    store = sum(t.layout.numel * t.layout.block_size * 8 for t in targets)
    largest = max(t.layout.numel * t.layout.block_size * 8 for t in targets)
    free = workspace_bytes("cpu") + store // 2
    assert largest < store // 2
    monkeypatch.setattr(pruner_module, "available_memory", lambda device: free)
    with pytest.raises(hf_sparsify.PruningError, match=r"Fisher blocks .* Set max_fisher_memory_gb=([0-9.e-]+) \(layer streaming: (\d+) groups") as err:
        hf_sparsify.prune(model, config, batches)
    assert not calls  # refused before any gradient
    budget = float(re.search(r"max_fisher_memory_gb=([0-9.e-]+)", str(err.value)).group(1))
    assert largest <= budget * (1 << 30) <= 0.9 * (free - workspace_bytes("cpu"))
    pruned = hf_sparsify.prune(model, config.replace(max_fisher_memory_gb=budget), batches)
    assert pruned.pruning_result.info["fisher_groups"] > 1 and calls
