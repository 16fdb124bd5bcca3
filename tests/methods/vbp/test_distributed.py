"""Data-parallel VBP: 2 processes (gloo on CPU) give the moments and the pruned model of 1 process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_sparsify
from hf_sparsify.adapters import CONV_CHANNEL, MLP_NEURON, get_adapter
from hf_sparsify.observers import Moments, collect_activation_moments
from tests.methods.vbp.helpers import distributed_case, synthetic_batches

SCRIPT = Path(__file__).with_name("distributed_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch.distributed with gloo is unavailable")
def test_two_processes_equal_one_process(tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts several CPU processes only through MPI's mpirun;
    # the torchrun-based launcher (--multi_gpu) works on a CPU-only machine: hf_sparsify joins it over gloo.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_SPARSIFY_DISABLE_TQDM": "1"}
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU (gloo) path")
    out = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["num_processes"] == 2 for r in ranks)

    model, batches, config = distributed_case()
    groups = get_adapter(model).structure_groups([MLP_NEURON, CONV_CHANNEL])
    single = collect_activation_moments(model, {g.name: g.observe for g in groups}, batches)
    pruned = hf_sparsify.prune(model, config, batches)
    exact = Moments.empty(4)
    for batch in synthetic_batches():
        exact.update(batch, num_samples=batch.shape[0])
    for rank in ranks:
        # the cross-process merge is exact: float64 data give the 1-process moments to rounding
        count, num_samples, mean, m2 = rank["exact"]
        assert (count, num_samples) == (exact.count, exact.num_samples) == (66, 22)
        torch.testing.assert_close(mean, exact.mean, rtol=1e-14, atol=0)
        torch.testing.assert_close(m2, exact.m2, rtol=1e-12, atol=0)
        # model activations: float32 forward passes in differently threaded processes differ in the last bits
        for key, m in single.items():
            count, num_samples, mean, m2 = rank["moments"][key]
            assert count == m.count and num_samples == m.num_samples == 15
            torch.testing.assert_close(mean, m.mean, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(m2, m.m2, rtol=1e-5, atol=1e-7)
        state = pruned.state_dict()
        assert rank["state_dict"].keys() == state.keys()
        for name, tensor in state.items():
            assert rank["state_dict"][name].shape == tensor.shape, name
            torch.testing.assert_close(rank["state_dict"][name], tensor, rtol=1e-6, atol=1e-7)
        assert rank["info"]["num_calibration_samples"] == 15 and rank["info"]["num_processes"] == 2
