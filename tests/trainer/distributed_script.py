"""Run by tests/trainer/test_distributed.py under ``accelerate launch`` (1 or 2 CPU processes).

Gradual pruning with a data-driven method whose scores carry rank-dependent noise (so that processes would choose
different masks on their own), distillation, then every process writes its masks, weights and what its pruner
computed before SparseTrainer's broadcast.

Usage: accelerate launch --cpu --num_processes N distributed_script.py OUTPUT_DIR PER_DEVICE_BATCH
"""

import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_SPARSIFY_DISABLE_TQDM", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from hf_sparsify import PruningSchedule, SparseTrainer, register_method  # noqa: E402
from tests.trainer.toy import TaylorConfig, TaylorPruner, ToyImages, tiny_vit, training_args  # noqa: E402


class RecordingTaylor(TaylorPruner):
    """Also records a hash of the masks this process computed, before SparseTrainer's broadcast."""

    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False):
        result = super().prune(model, adapter, calibration, device=device, disable_tqdm=disable_tqdm)
        digest = hashlib.sha256()
        for layer in adapter.select_layers(None, None):
            digest.update((layer.weight.detach() != 0).cpu().numpy().tobytes())
        type(self).hashes.append(digest.hexdigest())
        return result


RecordingTaylor.hashes = []


def main(output_dir: str, batch_size: int) -> None:
    transformers.logging.set_verbosity_error()
    register_method("test_taylor_dist", TaylorConfig, RecordingTaylor)
    model = tiny_vit(seed=0)
    args = training_args(
        output_dir, max_steps=12, per_device_train_batch_size=batch_size, learning_rate=3e-3, weight_decay=0.05,
        max_grad_norm=1.0, logging_steps=4,
    )
    trainer = SparseTrainer(
        model=model, args=args, train_dataset=ToyImages(96), teacher_model=tiny_vit(seed=5),
        pruning_config=TaylorConfig(sparsity=0.7, noise=0.5, calibration_batch_size=8),
        schedule=PruningSchedule.gradual(initial_sparsity=0.3, end=8, every=4, ramp="linear"),
    )
    trainer.train()
    rank = trainer.args.process_index
    torch.save(
        {
            "world_size": trainer.args.world_size,
            "masks": {k: v.cpu() for k, v in trainer.masks.masks.items()},
            "weights": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "history": trainer.pruning_history,
            "pre_broadcast_hashes": RecordingTaylor.hashes,
            "logs": [h for h in trainer.state.log_history if "loss" in h],
        },
        os.path.join(output_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
