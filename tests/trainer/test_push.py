"""``trainer.push_to_hub()`` to a local Hub server: the pruned checkpoint, its pruning config and one model card
(hf_sparsify's, with transformers' training data merged in) arrive, and the one-call loader reloads them."""

import pytest
import torch
from huggingface_hub import hf_hub_download

import hf_sparsify
from hf_sparsify import MagnitudeConfig, SparseTrainer
from tests.trainer.toy import ToyImages, tiny_vit, training_args


def test_push_to_hub_uploads_a_reloadable_checkpoint_with_a_merged_card(hub, repo_name, tmp_path):
    model = tiny_vit()
    args = training_args(tmp_path / repo_name, max_steps=4, hub_model_id=f"user/{repo_name}", hub_token=hub.token)
    trainer = SparseTrainer(
        model=model, args=args, train_dataset=ToyImages(32), eval_dataset=ToyImages(16, seed=1),
        pruning_config=MagnitudeConfig(sparsity=0.6), teacher_model=tiny_vit(seed=4),
    )
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(dataset_tags="toy-images")
    repo = f"user/{repo_name}"
    config_file = hf_hub_download(repo, "pruning_config.json")
    assert hf_sparsify.PruningConfig.from_pretrained(config_file).sparsity == pytest.approx(0.6)
    card = open(hf_hub_download(repo, "README.md"), encoding="utf-8").read()
    assert "hf-sparsify" in card and "magnitude" in card  # hf_sparsify's card...
    assert "SparseTrainer" in card and "learning rate" in card and "distillation from the dense model" in card  # ...with the training data
    assert "toy-images" in card
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(repo)
    assert hf_sparsify.sparsity_report(reloaded).sparsity == pytest.approx(0.6, abs=1e-3)
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
