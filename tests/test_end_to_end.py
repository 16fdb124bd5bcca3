"""End to end on the bundled trained tiny ViT: prune, measure, save, reload."""

import pytest
import torch
from transformers import AutoModelForImageClassification

import hf_sparsify
from hf_sparsify.evaluation import evaluate_model


def test_magnitude_50_on_the_bundled_vit(demo_model, demo_processor, demo_evaluation, tmp_path, capsys):
    pruned = hf_sparsify.prune(demo_model, hf_sparsify.MagnitudeConfig(sparsity=0.5, sparsity_distribution="global"))
    report = hf_sparsify.sparsity_report(pruned)
    assert abs(report.sparsity - 0.5) <= 0.005
    assert report.targeted_numel == sum(l.numel for l in hf_sparsify.get_adapter(demo_model).prunable_layers())

    before = evaluate_model(demo_model, demo_evaluation, image_processor=demo_processor, batch_size=500)
    after = evaluate_model(pruned, demo_evaluation, image_processor=demo_processor, batch_size=500)
    with capsys.disabled():
        print(f"\n[bundled ViT-tiny, 2,000 CIFAR-10 test images] dense {before['accuracy']:.2%} -> magnitude 50% global {after['accuracy']:.2%}")
    assert before["accuracy"] > 0.65 and after["accuracy"] < before["accuracy"]

    pruned.save_pretrained(tmp_path)
    x = torch.randn(8, 3, 32, 32)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(reloaded(pixel_values=x).logits, pruned(pixel_values=x).logits)
    for name, tensor in pruned.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    one_call = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(one_call(pixel_values=x).logits, pruned(pixel_values=x).logits)
    assert one_call.pruning_config == pruned.pruning_config
