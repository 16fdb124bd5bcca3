"""CAP's greedy elimination on one chunk (issue 17.3): where the time goes, and this tree against another revision.

    python benchmarks/bench_cap_elimination.py [--blocks 256] [--block 192] [--structure unstructured|2:4] \
        [--against main] [--rounds 10] [--threads 1]

One chunk of ``--blocks`` Fisher blocks of ``--block`` weights (random gradients, 128 per block, damp 1e-8; random
weights, none zero) is eliminated by :func:`hf_sparsify.methods.cap.elimination.greedy_eliminate` of this tree and,
with ``--against REV``, by the one of ``git show REV:hf_sparsify/methods/cap/elimination.py`` loaded as a module.
Printed, per implementation: the operators per elimination step (top-level ``aten::`` calls of one profiled run
divided by the number of steps) and the operators with the most self time (``torch.profiler``); whether both give bit-identical
orders, cumulative losses, weights and downdated inverses; and the seconds of ``--rounds`` runs, alternating which
goes first (median and minimum). On a shared machine compare only the two columns of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hf_sparsify.methods.cap.elimination import greedy_eliminate
from hf_sparsify.methods.cap.inverse import block_fisher_inverse

ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str):
    """``greedy_eliminate`` of ``rev``'s elimination.py, imported as a stand-alone module."""
    source = subprocess.run(["git", "show", f"{rev}:hf_sparsify/methods/cap/elimination.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    source = source.replace("from .inverse import", "from hf_sparsify.methods.cap.inverse import")
    folder = tempfile.mkdtemp()
    path = Path(folder) / "elimination_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("elimination_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.greedy_eliminate


def profile_one(eliminate, weights, hinv, work, nm) -> tuple[float, list[tuple[str, float, int]]]:
    """Top-level operators per step and the operators with the most self time (name, ms, calls)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps = eliminate(weights, work.copy_(hinv), nm=nm).order.shape[1]
    top_level = [e for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    per_step = len(top_level) / steps
    table = sorted(((a.key, a.self_cpu_time_total / 1e3, a.count) for a in prof.key_averages()), key=lambda x: -x[1])[:8]
    return per_step, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--block", type=int, default=192)
    parser.add_argument("--structure", default="unstructured", help="'unstructured' or 'N:M'")
    parser.add_argument("--against", default=None, help="a git revision whose greedy_eliminate is compared (e.g. main)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, b = args.blocks, args.block
    nm = None
    if args.structure != "unstructured":
        keep, group = (int(x) for x in args.structure.split(":"))
        nm = (group, group - keep)
    generator = torch.Generator().manual_seed(0)
    grads = torch.randn(n, 128, b, generator=generator, dtype=torch.float64)
    hinv, _ = block_fisher_inverse(grads.transpose(1, 2) @ grads, 128, 1e-8)
    del grads
    weights = torch.randn(n, b, generator=generator, dtype=torch.float64)
    work = torch.empty_like(hinv)
    implementations = {"this tree": greedy_eliminate}
    if args.against:
        implementations[args.against] = load_revision(args.against)
    print(f"{n} blocks of B = {b}, {args.structure}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    results = {}
    for name, eliminate in implementations.items():
        eliminate(weights, work.copy_(hinv), nm=nm)  # warm-up
        per_step, table = profile_one(eliminate, weights, hinv, work, nm)
        print(f"\n{name}: {per_step:.1f} top-level operators per step; most self time:")
        for op, ms, calls in table:
            print(f"  {op:28s} {ms:9.1f} ms  {calls:6d} calls")
        elim = eliminate(weights, work.copy_(hinv), nm=nm)
        results[name] = (elim, work.clone())
    if args.against:
        (a, ha), (c, hc) = results.values()
        same = all(torch.equal(getattr(a, f), getattr(c, f)) for f in ("order", "cumloss", "num_forced", "num_steps", "weights")) and torch.equal(ha, hc)
        print(f"\nbit-identical orders, losses, weights and inverses: {same}")
    times: dict[str, list[float]] = {name: [] for name in implementations}
    names = list(implementations)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            work.copy_(hinv)
            start = time.perf_counter()
            implementations[name](weights, work, nm=nm)
            times[name].append(time.perf_counter() - start)
    print()
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s, min {min(values):.3f} s over {len(values)} runs")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
