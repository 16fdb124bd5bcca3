"""Data-parallel SOSP: 2 processes (gloo on CPU) give the saliencies and the pruned model of 1 process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_sparsify
from tests.methods.sosp.helpers import distributed_cases

SCRIPT = Path(__file__).with_name("distributed_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch.distributed with gloo is unavailable")
def test_two_processes_equal_one_process(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU (gloo) path")
    # the torchrun launcher (--multi_gpu) starts CPU processes joined over gloo (--cpu needs mpirun)
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
        state, result = single.state_dict(), single.pruning_result
        for rank in ranks:
            other = rank["results"][name]
            assert other["info"]["num_processes"] == 2 and result.info["num_processes"] == 1
            assert other["info"]["num_calibration_samples"] == result.info["num_calibration_samples"] == 18
            for group, facts in result.layers.items():
                assert other["layers"][group]["width"] == facts["width"], f"{name}: {group}"
                # float64 statistics summed in another order: equal to rounding
                for key in ("removed_saliency", "kept_saliency"):
                    assert other["layers"][group][key] == pytest.approx(facts[key], rel=1e-9, abs=1e-15), f"{name}: {group} {key}"
            if "predicted_loss_change" in result.info:
                assert other["info"]["predicted_loss_change"] == pytest.approx(result.info["predicted_loss_change"], rel=1e-9)
            assert other["state_dict"].keys() == state.keys()
            for key, tensor in state.items():
                torch.testing.assert_close(other["state_dict"][key], tensor, rtol=0, atol=0, msg=f"{name}: {key}")
