"""Run by test_distributed.py under a 2-process launcher: SOSP-pruned weights and saliencies, saved per rank.

Usage: accelerate launch --multi_gpu --num_processes 2 distributed_script.py OUT_DIR
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import hf_sparsify  # noqa: E402
from hf_sparsify.observers import distributed_state  # noqa: E402
from tests.methods.sosp.helpers import distributed_cases  # noqa: E402


def main(out: Path) -> None:
    state = distributed_state()
    results = {}
    for name, (model, batches, config) in distributed_cases().items():
        pruned = hf_sparsify.prune(model, config, batches, disable_tqdm=True)
        result = pruned.pruning_result
        results[name] = {"state_dict": pruned.state_dict(), "info": result.info, "layers": result.layers}
    torch.save({"num_processes": state.num_processes, "results": results}, out / f"rank{state.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
