"""The one scratch-memory rule (``hf_sparsify.utils.workspace_bytes``) on CPU: how the chunk size it implies changes
the time of CAP's batched inverse, greedy elimination and replay, for a few workspace sizes, interleaved in
rounds (so that a noisy machine's load hits every size alike).

    python benchmarks/bench_cap_workspace.py [--threads 2] [--rounds 3] [--sizes 16,64,256]

Problems: the bundled ViT-tiny's blocks (2,304 blocks of B = 48) and a quarter of a DeiT-Small qkv layer
(576 blocks of B = 192), float64 (the default Fisher dtype). Prints one JSON object: per problem, phase and
workspace, the median seconds and the ratio to the 256 MiB rule.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from hf_sparsify.methods.cap.elimination import greedy_eliminate, replay
from hf_sparsify.methods.cap.inverse import block_fisher_inverse, chunks


def _problem(num_blocks: int, block: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_blocks, 64, block, generator=g, dtype=torch.float64)
    weights = torch.randn(num_blocks, block, generator=g, dtype=torch.float64)
    return weights, grads.transpose(1, 2) @ grads


def _phases(weights, sums, chunk: int) -> dict[str, float]:
    out = {}
    start = time.perf_counter()
    hinv, _ = block_fisher_inverse(sums.clone(), 64, 1e-8, blocks_in_parallel=chunk)
    out["inverse"] = time.perf_counter() - start
    n, b = weights.shape
    order = torch.empty(n, b, dtype=torch.long)
    start = time.perf_counter()
    for lo, hi in chunks(n, chunk):
        order[lo:hi] = greedy_eliminate(weights[lo:hi], hinv[lo:hi].clone()).order
    out["elimination"] = time.perf_counter() - start
    counts = torch.full((n,), b // 2)
    start = time.perf_counter()
    for lo, hi in chunks(n, chunk):
        replay(weights[lo:hi], hinv[lo:hi], order[lo:hi], counts[lo:hi])
    out["replay"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="16,64,256", help="workspace sizes in MiB")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    problems = {"vit-tiny (2304 x B=48)": _problem(2304, 48), "deit-small qkv/4 (576 x B=192)": _problem(576, 192)}
    times: dict[str, dict[str, dict[int, list[float]]]] = {}
    load = os.getloadavg()
    for _ in range(args.rounds):
        for name, (weights, sums) in problems.items():
            block = weights.shape[1]
            for mib in sizes:
                chunk = max(1, (mib << 20) // (block * block * 8))
                for phase, seconds in _phases(weights, sums, chunk).items():
                    times.setdefault(name, {}).setdefault(phase, {}).setdefault(mib, []).append(seconds)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "median_seconds": {},
        "ratio_to_256MiB": {},
    }
    for name, phases in times.items():
        for phase, by_size in phases.items():
            medians = {mib: statistics.median(v) for mib, v in by_size.items()}
            result["median_seconds"].setdefault(name, {})[phase] = {f"{m} MiB": round(t, 3) for m, t in medians.items()}
            if 256 in medians:
                result["ratio_to_256MiB"].setdefault(name, {})[phase] = {f"{m} MiB": round(t / medians[256], 2) for m, t in medians.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
