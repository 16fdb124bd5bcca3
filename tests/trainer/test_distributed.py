"""``accelerate launch`` with 2 CPU processes: identical masks on every process, and the same result as one process
with the same global batch (gloo, CPU).

accelerate 1.15's ``--cpu`` flag starts one process unless an MPI hostfile is given (``--mpirun_hostfile``), so the
two processes are started by the torchrun-based launcher (``--multi_gpu``); the script's ``use_cpu=True`` (and
``ACCELERATE_USE_CPU``) puts them on CPU, where accelerate runs them as ``MULTI_CPU`` over gloo.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("distributed_script.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(output_dir: Path, num_processes: int, batch_size: int) -> list[dict]:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed")
    output_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    launcher = ["--multi_gpu"] if num_processes > 1 else []
    command = [
        accelerate, "launch", *launcher, "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(SCRIPT), str(output_dir), str(batch_size),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return [torch.load(output_dir / f"rank{r}.pt", weights_only=False) for r in range(num_processes)]


@pytest.mark.slow
def test_two_processes_share_masks_and_match_one_process(tmp_path):
    ranks = launch(tmp_path / "two", 2, batch_size=8)
    single = launch(tmp_path / "one", 1, batch_size=16)[0]
    r0, r1 = ranks
    assert r0["world_size"] == 2 and single["world_size"] == 1

    # Without the broadcast the processes would disagree: their pruners chose different masks...
    assert len(r0["pre_broadcast_hashes"]) == len(r1["pre_broadcast_hashes"]) == 3
    assert r0["pre_broadcast_hashes"] != r1["pre_broadcast_hashes"]
    # ...but the masks SparseTrainer keeps, and the weights, are identical on every process.
    assert r0["masks"].keys() == r1["masks"].keys()
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
    assert [h["step"] for h in r0["history"]] == [h["step"] for h in r1["history"]] == [0, 4, 8]

    # sparsity reached on both
    for r in ranks + [single]:
        zeros = sum(int((~m).sum()) for m in r["masks"].values())
        total = sum(m.numel() for m in r["masks"].values())
        assert zeros / total == pytest.approx(0.7, abs=2e-3)

    # Same global batch (2 x 8 vs 1 x 16), same data order: the 2-process run matches the 1-process run.
    assert r0["pre_broadcast_hashes"][0] == single["pre_broadcast_hashes"][0]  # the first step is exactly the same
    agreement = sum(int((r0["masks"][n] == single["masks"][n]).sum()) for n in r0["masks"]) / sum(m.numel() for m in r0["masks"].values())
    assert agreement > 0.99
    for name in r0["weights"]:
        torch.testing.assert_close(r0["weights"][name], single["weights"][name], rtol=0, atol=2e-3, msg=name)
    losses_2 = [h["loss"] for h in r0["logs"]]
    losses_1 = [h["loss"] for h in single["logs"]]
    assert losses_2 == pytest.approx(losses_1, rel=1e-3)
