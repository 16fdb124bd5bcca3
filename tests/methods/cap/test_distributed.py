"""Data-parallel gradient collection: 2 processes (gloo on CPU) give the masks and weights of 1 process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_sparsify
from tests.methods.cap.helpers import distributed_cases

SCRIPT = Path(__file__).with_name("distributed_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch.distributed with gloo is unavailable")
def test_two_processes_equal_one_process(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU (gloo) path")
    # accelerate 1.15 starts several CPU processes with `--cpu --num_processes N` only through mpirun (absent
    # here); its torchrun launcher (--multi_gpu) starts them on a CPU-only machine, joined over gloo.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_SPARSIFY_DISABLE_TQDM": "1"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["num_processes"] == 2 for r in ranks)
    for name, (model, batches, config) in distributed_cases().items():
        single = hf_sparsify.prune(model, config, batches, disable_tqdm=True)
        state = single.state_dict()
        for rank in ranks:
            result = rank["results"][name]
            assert result["info"]["num_processes"] == 2
            assert result["info"]["num_grads"] == single.pruning_result.info["num_grads"] == config.num_grads
            for key, tensor in state.items():
                other = result["state_dict"][key]
                assert torch.equal(other == 0, tensor == 0), f"{name}: mask of {key}"
                torch.testing.assert_close(other, tensor, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
