"""Expand-then-prune (SOSP paper, Fig. 3) on the bundled tiny ViT over seeds: examples/expand_then_prune.py per seed,
mean ± sd per model, written as a subsection of benchmarks/RESULTS.md (machine, date, command, load).

Every model ends at the MACs of the model pruned directly (the same budget); see the example's docstring for the arms.
Arguments the benchmark does not know go to the example (``--init-std 0.05``, ``--method sosp-h``...): each set of
example arguments is its own subsection, replaced when run again.

    python benchmarks/bench_expand_then_prune.py [--seeds 0,1,2] [--train-steps 300] [--finetune-steps 100] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import torch  # noqa: E402
import transformers  # noqa: E402

import expand_then_prune as example  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Bottlenecks: expand-then-prune (issue 13)"
SECTION_INTRO = """\
The SOSP paper's expand-then-prune study (Fig. 3: layers a global ranking prunes least are widened ×2 and the network is
pruned again, against a uniform ×1.1 widening) on the bundled ViT-tiny (4 blocks, MLP width 192), by
`examples/expand_then_prune.py`: prune the dense model globally to remove 35% of its MACs and read the bottleneck
candidates (`hf_sparsify.bottleneck_report`: kept fraction ≥ the median + 10 points); then three arms start from the
dense model, get the same short training (AdamW, cosine schedule, random crops and flips, plain `transformers.Trainer`)
and are pruned back with the same method to **the MACs of the model pruned directly**: no widening ("train only", the
control), the candidates ×2 (`hf_sparsify.expand`), every MLP ×1.1. Every pruned model is then fine-tuned the same
number of steps. Top-1 on the full CIFAR-10 test split (10,000 images) unless a row says otherwise; mean ± sd over seeds
(the seed sets the calibration draw, the training order and the new units' initial weights)."""


def load_average() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - no load average on this platform
        return "n/a"


def mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f}% ± {100 * sd:.2f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def subsection(runs: list[dict], command: str, loads: tuple[str, str], extra: list[str]) -> str:
    first = runs[0]
    stages = ["after_pruning"] + (["after_finetuning"] if first["finetune_steps"] else [])
    names = [("dense", "dense"), ("pruned", "pruned directly"), *((arm, f"{arm}, trained, pruned back") for arm in example.ARMS)]
    title = f"### {first['method']}, {first['macs_reduction']:.0%} of the MACs, {first['train_steps']} training steps" + (f" ({' '.join(extra)})" if extra else "")
    lines = [
        title,
        "",
        f"- Machine: {machine()}; date {datetime.date.today().isoformat()}; load average {loads[0]} at the start, {loads[1]} at the end.",
        f"- Command: `{command}` ({len(runs)} seeds: {', '.join(str(r['seed']) for r in runs)}; {sum(r['total_seconds'] for r in runs) / 60:.0f} min in all).",
        f"- Data: {first['data']}, {first['eval_samples']:,} test images; training {first['train_steps']} steps of batch "
        f"{first.get('batch_size', 128)} before pruning back, {first['finetune_steps']} after every pruning.",
        "- Candidates widened (per seed): " + "; ".join(", ".join(f"`{n}`" for n in r["widened"]) for r in runs) + ".",
        "",
        "| model | MACs | params | top-1 before pruning (trained) | " + " | ".join(f"top-1 {s.replace('_', ' ')}" for s in stages) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(stages),
    ]
    for key, label in names:
        entries = [r[key] for r in runs]
        if key == "dense":
            lines.append(f"| {label} | {entries[0]['macs'] / 1e6:.2f} M | {entries[0]['params']:,} | {mean_sd([e['accuracy'] for e in entries])} |" + " |" * len(stages))
            continue
        final = entries[0]["after_pruning"]
        trained = mean_sd([e["after_training"]["accuracy"] for e in entries]) if "after_training" in entries[0] else ""
        if "widened_macs" in entries[0]:
            trained += f" at {entries[0]['widened_macs'] / 1e6:.2f} M MACs"
        cells = " | ".join(mean_sd([e[s]["accuracy"] for e in entries if s in e]) for s in stages)
        macs = sorted({e["after_pruning"]["macs"] for e in entries})
        macs_text = f"{macs[0] / 1e6:.2f} M" if len(macs) == 1 else f"{macs[0] / 1e6:.2f}–{macs[-1] / 1e6:.2f} M"
        lines.append(f"| {label} | {macs_text} | {final['params']:,} | {trained} | {cells} |")
    lines.append("")
    lines.append("Widths after pruning back and how many of the kept units are new ones (seed " + str(runs[0]["seed"]) + "):")
    lines.append("")
    for arm in example.ARMS:
        entry = runs[0][arm]
        new = entry.get("kept_new_units") or {}
        lines.append(f"- {arm}: widths {list(entry['widths'].values())}" + (f"; new units kept {list(new.values())}" if new else ""))
    lines.append(f"- pruned directly: widths {[g['kept'] for g in runs[0]['report']['groups']]}")
    return "\n".join(lines)


def write_results(text: str, title: str) -> None:
    content = RESULTS.read_text(encoding="utf-8")
    if SECTION not in content:
        content = content.rstrip("\n") + f"\n\n{SECTION}\n\n{SECTION_INTRO}\n"
    start = content.index(SECTION)
    following = re.search(r"^## ", content[start + len(SECTION):], flags=re.M)
    end = start + len(SECTION) + following.start() if following else len(content)
    section = content[start:end].rstrip("\n")
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^### |\Z)", flags=re.M | re.S)
    section = pattern.sub(lambda _: text + "\n\n", section).rstrip("\n") if pattern.search(section) else section + "\n\n" + text
    RESULTS.write_text(content[:start] + section + "\n" + ("\n" + content[end:] if end < len(content) else ""), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--output-dir", default="runs/bench_expand_then_prune")
    parser.add_argument("--no-write", action="store_true", help="print the subsection, do not write RESULTS.md")
    args, extra = parser.parse_known_args()
    command = "python benchmarks/bench_expand_then_prune.py " + " ".join(sys.argv[1:])
    start_load = load_average()
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        argv = ["--seed", str(seed), "--train-steps", str(args.train_steps), "--finetune-steps", str(args.finetune_steps), "--output-dir", f"{args.output_dir}/seed{seed}", *extra]
        result = example.main(argv)
        result["batch_size"] = example.build_parser().parse_args(argv).batch_size
        runs.append(result)
        print(json.dumps({k: result[k] for k in ("seed", "widened", "table")}, ensure_ascii=False))
    text = subsection(runs, command, (start_load, load_average()), extra)
    print(text)
    if not args.no_write:
        write_results(text, text.splitlines()[0])
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
