"""Run by test_distributed.py under a 2-process launcher: VBP's moments and pruned model, saved per rank.

Usage: accelerate launch --multi_gpu --num_processes 2 distributed_script.py OUT_DIR
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import hf_sparsify  # noqa: E402
from hf_sparsify.adapters import CONV_CHANNEL, MLP_NEURON, get_adapter  # noqa: E402
from hf_sparsify.observers import Moments, collect_activation_moments, distributed_state, shard_batches  # noqa: E402
from tests.methods.vbp.helpers import DISTRIBUTED_CASE, distributed_case, synthetic_batches  # noqa: E402


def main(out: Path) -> None:
    state = distributed_state()
    model, batches, config = distributed_case()
    groups = get_adapter(model).structure_groups([MLP_NEURON, CONV_CHANNEL])
    moments = collect_activation_moments(model, {g.name: g.observe for g in groups}, batches)
    pruned = hf_sparsify.prune(model, config, batches)
    exact = Moments.empty(4)
    for batch in shard_batches(synthetic_batches()):
        exact.update(batch, num_samples=batch.shape[0])
    exact.all_reduce()
    torch.save(
        {
            "num_processes": state.num_processes,
            "moments": {k: (m.count, m.num_samples, m.mean, m.m2) for k, m in moments.items()},
            "state_dict": pruned.state_dict(),
            "info": pruned.pruning_result.info,
            "case": DISTRIBUTED_CASE,
            "exact": (exact.count, exact.num_samples, exact.mean, exact.m2),
        },
        out / f"rank{state.process_index}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
