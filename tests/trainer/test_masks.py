"""Masks stay exact through training: weight decay, clipping, accumulation, mixed precision, torch.compile."""

import pytest
import torch
from transformers import Trainer, TrainerCallback

import hf_sparsify
from hf_sparsify import SparseTrainer
from hf_sparsify.trainer import MaskState
from tests.trainer.toy import ToyImages, tiny_vit, training_args, weights


def pruned_vit(sparsity=0.5):
    return hf_sparsify.prune(tiny_vit(), hf_sparsify.MagnitudeConfig(sparsity=sparsity, sparsity_distribution="global"))


def layer_names(model):
    return [layer.name for layer in hf_sparsify.get_adapter(model).prunable_layers()]


def test_mask_state_unit(tmp_path):
    model = pruned_vit()
    masks = MaskState.from_weights(model)
    assert len(masks) == len(layer_names(model))
    assert masks.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    # weights drift (as after an optimizer step) -> apply() restores the exact zeros
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    masks.apply()
    for name, mask in masks.masks.items():
        weight = model.get_submodule(name).weight
        assert torch.all(weight[~mask] == 0)
    # gradient hooks zero pruned gradients
    masks.attach_gradient_hooks()
    model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1])).loss.backward()
    for name, mask in masks.masks.items():
        assert torch.all(model.get_submodule(name).weight.grad[~mask] == 0)
    masks.detach_gradient_hooks()
    # save / load round trip and fingerprint
    masks.save(tmp_path / "m.safetensors")
    again = MaskState.load(model, tmp_path / "m.safetensors")
    assert all(torch.equal(again.masks[n], masks.masks[n]) for n in masks.masks)
    assert torch.equal(again.fingerprint(), masks.fingerprint())
    other = MaskState.from_weights(pruned_vit(0.6))
    assert not torch.equal(other.fingerprint(), masks.fingerprint())


def test_masks_from_another_model_are_refused(tmp_path):
    masks = MaskState.from_weights(pruned_vit())
    masks.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="shape"):
        MaskState.load(tiny_vit(intermediate_size=48), tmp_path / "m.safetensors")


PRECISIONS = {  # gradient accumulation on one variant keeps the suite fast
    "fp32": {"gradient_accumulation_steps": 2},
    "bf16": {"bf16": True},
    "fp16": {"fp16": True},
    "compile": {"torch_compile": True, "torch_compile_backend": "aot_eager"},
}


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_masks_survive_20_optimizer_steps(tmp_path, precision):
    model = pruned_vit()
    names = layer_names(model)
    before = weights(model, names)
    args = training_args(
        tmp_path, max_steps=20, weight_decay=0.1, max_grad_norm=1.0, **PRECISIONS[precision]
    )
    trainer = SparseTrainer(model=model, args=args, train_dataset=ToyImages(64))
    trainer.train()
    assert trainer.state.global_step == 20
    after = weights(model, names)
    moved = 0
    for name in names:
        pruned = before[name] == 0
        assert torch.all(after[name][pruned] == 0), f"{name}: a pruned weight became non-zero ({precision})"
        assert torch.equal(after[name] == 0, pruned), f"{name}: the set of zeros changed ({precision})"
        moved += int((after[name] != before[name]).sum())
    assert moved > 0.4 * sum(w.numel() for w in before.values())  # the live weights did train
    assert hf_sparsify.sparsity_report(model).sparsity == pytest.approx(0.5, abs=1e-3)
    assert not trainer.masks._hooks  # gradient hooks are removed after training


def test_a_plain_trainer_loses_the_zeros(tmp_path):
    """The control for the test above: without SparseTrainer, weight decay + Adam move pruned weights."""
    model = pruned_vit()
    trainer = Trainer(model=model, args=training_args(tmp_path, max_steps=5, weight_decay=0.1), train_dataset=ToyImages(64))
    trainer.train()
    assert hf_sparsify.sparsity_report(model).sparsity < 0.05


def test_structurally_pruned_model_simply_trains(tmp_path):
    """A physically smaller model (shrunk MLPs) has nothing to mask and trains like any model."""
    from hf_sparsify.surgery import keep_units
    from hf_sparsify.adapters import MLP_NEURON

    model = tiny_vit()
    adapter = hf_sparsify.get_adapter(model)
    for group in adapter.structure_groups([MLP_NEURON]):
        keep_units(model, group, torch.arange(0, 64, 2))
    assert model.vit.layers[0].mlp.fc1.out_features == 32
    trainer = SparseTrainer(model=model, args=training_args(tmp_path, max_steps=3), train_dataset=ToyImages(32))
    assert len(trainer.masks) == 0
    trainer.train()
    assert trainer.state.global_step == 3


def test_layers_masked_after_the_hooks_were_attached_get_a_hook():
    """Training starts dense (no masks): the first pruning step's masks must zero gradients too."""
    model = tiny_vit()
    masks = MaskState.from_weights(model)
    assert len(masks) == 0
    masks.attach_gradient_hooks()
    hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5), inplace=True)
    masks.update_from_weights(layer_names(model))
    model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1])).loss.backward()
    for name, mask in masks.masks.items():
        grad = model.get_submodule(name).weight.grad
        assert torch.all(grad[~mask] == 0) and torch.any(grad[mask] != 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_model_keeps_its_masks_through_a_pruning_step_and_a_training_step(tmp_path, dtype):
    """Weights stored in bf16/fp16 (no mixed precision): prune at step 1 after a dense step (Adam's moments of the
    pruned entries are non-zero then), distil from a half-precision teacher; the zeros stay."""
    model, teacher = tiny_vit().to(dtype), tiny_vit(seed=3).to(dtype)

    def collate(items):
        return {"pixel_values": torch.stack([it["pixel_values"] for it in items]).to(dtype), "labels": torch.tensor([it["labels"] for it in items])}

    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=3, weight_decay=0.1, max_grad_norm=1.0, logging_steps=1),
        train_dataset=ToyImages(32), data_collator=collate, teacher_model=teacher,
        pruning_config=hf_sparsify.MagnitudeConfig(sparsity=0.5, sparsity_distribution="global"), schedule=hf_sparsify.PruningSchedule.one_shot(at=1),
    )
    pruned_after_step_1 = {}

    class Snapshot(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                pruned_after_step_1.update(weights(model, list(trainer.masks.masks)))

    trainer.add_callback(Snapshot())
    trainer.train()
    assert trainer.state.global_step == 3 and [r["step"] for r in trainer.pruning_history] == [1]
    assert all(p.dtype == dtype for p in model.parameters())
    after = weights(model, list(trainer.masks.masks))
    for name, mask in trainer.masks.masks.items():
        assert torch.all(after[name][~mask] == 0), f"{name}: a pruned weight became non-zero ({dtype})"
        assert torch.all(pruned_after_step_1[name][~mask] == 0)
    moved = sum(int((after[n] != pruned_after_step_1[n]).sum()) for n in after)
    assert moved > 0.3 * sum(int(m.sum()) for m in trainer.masks.masks.values())  # the live weights did train
    assert hf_sparsify.sparsity_report(model, compute_macs=False).sparsity == pytest.approx(0.5, abs=1e-3)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
