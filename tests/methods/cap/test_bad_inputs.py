"""Every bad input of the CAP family gets a clear error that says what to change."""

import pytest

import hf_sparsify
from hf_sparsify import CalibrationDataError, CAPConfig, FastCAPConfig, PruningConfigError, PruningError, WoodFisherConfig
from tests.conftest import make_tiny_model, tiny_batches

CONFIGS = [CAPConfig, WoodFisherConfig, FastCAPConfig]


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(damp=0.0), r"damp must be a finite number > 0"),
        (dict(damp=-1e-8), r"damp must be a finite number > 0"),
        (dict(damp=float("inf")), r"damp must be a finite number > 0"),
        (dict(num_grads=0), r"num_grads must be ≥ 1"),
        (dict(fisher_block_size=0), r"fisher_block_size must be ≥ 1"),
        (dict(num_recomputations=0), r"num_recomputations must be ≥ 1"),
        (dict(grad_batch_size=0), r"grad_batch_size must be ≥ 1"),
        (dict(sparsity=1.0), r"sparsity must be in \[0, 1\)"),
        (dict(sparsity=0.7, mask_structure="2:4"), r"keeps 2 of every 4 weights, i.e. sparsity 0.5; sparsity=0.7 cannot be reached"),
        (dict(sparsity=0.5, mask_structure="4:2"), r"N:M needs 0 < N < M"),
        (dict(loss="mse"), r"loss='mse' is not one of"),
        (dict(mixed_precision="fp16"), r"mixed_precision='fp16' is not one of"),
        (dict(fisher_blok_size=8), r"unknown key 'fisher_blok_size'.*Did you mean 'fisher_block_size'"),
    ],
)
def test_invalid_config_values(cls, kwargs, message):
    with pytest.raises(PruningConfigError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fisher_dtype="float16"), r"fisher_dtype='float16' is not one of"),
        (dict(blocks_in_parallel=0), r"blocks_in_parallel must be ≥ 1, or -1"),
        (dict(max_fisher_memory_gb=0.0), r"max_fisher_memory_gb must be > 0"),
        (dict(sparsity_distribution="layerwise"), r"sparsity_distribution='layerwise' is not one of"),
        (dict(nm_damp=-1e-2), r"nm_damp must be a finite number ≥ 0"),
    ],
)
def test_invalid_block_fisher_values(kwargs, message):
    with pytest.raises(PruningConfigError, match=message):
        CAPConfig(**kwargs)


def test_fastcap_is_uniform_only():
    with pytest.raises(PruningConfigError, match="FastCAP prunes every layer to the same sparsity.*CAPConfig"):
        FastCAPConfig(sparsity_distribution="global")
    with pytest.raises(PruningConfigError, match="columns_per_step=6 must be a multiple of M=4"):
        FastCAPConfig(mask_structure="2:4", columns_per_step=6)


@pytest.mark.parametrize("cls", CONFIGS)
def test_block_larger_than_a_layer_names_the_layer(cls):
    model = make_tiny_model("vit")  # q/k/v/o hold 32·32 = 1024 weights
    with pytest.raises(PruningConfigError, match=r"fisher_block_size=2000 is larger than layer vit\.layers\.0\.attention\.q_proj \(1024 weights\).*ignore="):
        hf_sparsify.prune(model, cls(fisher_block_size=2000, num_grads=1), tiny_batches(model, 1))


def test_nm_on_a_layer_whose_input_is_not_a_multiple_of_m():
    model = make_tiny_model("vit", hidden_size=30, intermediate_size=62, num_attention_heads=3)
    with pytest.raises(PruningConfigError, match="not a multiple of M=4"):
        hf_sparsify.prune(model, CAPConfig(mask_structure="2:4", fisher_block_size=8, num_grads=1), tiny_batches(model, 1))


@pytest.mark.parametrize("cls", CONFIGS)
def test_non_finite_gradients_name_the_layer(cls):
    model = make_tiny_model("deit")
    batches = tiny_batches(model, 2)
    batches[1]["pixel_values"][0] = float("nan")
    with pytest.raises(PruningError, match=r"Non-finite gradients for layer deit\.layers\.0\..*mixed_precision='no'"):
        hf_sparsify.prune(model, cls(fisher_block_size=16, num_grads=2), batches)


def test_backbone_without_labels_loss_names_the_options():
    model = make_tiny_model("dinov2", backbone=True)
    with pytest.raises(PruningError, match=r"Dinov2Model .*loss='features'.*loss=<callable"):
        hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=1), tiny_batches(model, 1))


def test_teacher_model_without_a_loss_prunes_on_the_cross_entropy_of_its_logits():
    """DeiTForImageClassificationWithTeacher is inference-only (it returns no loss): loss='labels' falls back to the
    cross-entropy of the logits it predicts with (the mean of its two heads)."""
    import torch

    from hf_sparsify.observers.gradients import _labels_loss

    model = make_tiny_model("deit_teacher")
    batch = tiny_batches(model, 1)[0]
    expected = torch.nn.functional.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    torch.testing.assert_close(_labels_loss(model, batch, 0), expected)
    pruned = hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=2), tiny_batches(model, 2))
    assert hf_sparsify.sparsity_report(pruned).sparsity > 0.4


def test_unlabelled_data_with_the_labels_loss_names_the_options():
    model = make_tiny_model("vit")
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model, 1)]
    with pytest.raises(CalibrationDataError, match=r"loss='labels' needs calibration data with labels.*loss='features'"):
        hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=1), batches)


def test_no_calibration_data():
    model = make_tiny_model("vit")
    with pytest.raises(CalibrationDataError, match="cap reads calibration data"):
        hf_sparsify.prune(model, CAPConfig())


def test_model_with_neither_labels_nor_a_usable_output_names_the_options():
    model = make_tiny_model("vit")
    inner = model.forward
    model.forward = lambda pixel_values, labels=None: {"note": str(inner(pixel_values=pixel_values).logits.shape)}
    batches = tiny_batches(model, 1)
    with pytest.raises(PruningError, match=r"returned no loss.*loss='features'.*callable"):
        hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=1), batches, inplace=True)
    with pytest.raises(PruningError, match=r"holds no tensor to build a loss on.*loss='labels'.*callable"):
        hf_sparsify.prune(model, CAPConfig(fisher_block_size=16, num_grads=1, loss="features"), batches, inplace=True)
