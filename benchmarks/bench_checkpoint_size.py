"""Checkpoint sizes: dense ``model.safetensors`` against hf_sparsify's compressed format
(``save_pretrained(dir, compressed=True)``), for magnitude pruning at 50% and 75% and 2:4, in fp32 and bf16.

Models: a ViT-Base/16 built from its config (86M parameters, random weights: sizes do not depend on the values'
distribution beyond the zeros) and the trained tiny ViT bundled with hf_sparsify (0.12M parameters, where the
dense embeddings and the file header weigh more). Every compressed checkpoint is reloaded with
``AutoSparseModelForImageClassification`` and compared tensor by tensor (the benchmark fails otherwise).

    python benchmarks/bench_checkpoint_size.py [--models vit-base tiny] [--json out.json]

Prints a Markdown table (size ratio = compressed / dense file size).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers

import hf_sparsify
from hf_sparsify.assets import DEMO_MODEL_DIR

SETTINGS = [
    ("50% unstructured", dict(sparsity=0.5)),
    ("75% unstructured", dict(sparsity=0.75)),
    ("2:4", dict(sparsity=0.5, mask_structure="2:4")),
]


def build(name: str):
    if name == "vit-base":
        config = transformers.ViTConfig(num_labels=1000)  # ViT-B/16, 224 px
        torch.manual_seed(0)
        return transformers.ViTForImageClassification(config).eval()
    if name == "tiny":
        return transformers.AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR).eval()
    raise ValueError(name)


def measure(name: str) -> list[dict]:
    rows = []
    base = build(name)
    for dtype in (torch.float32, torch.bfloat16):
        for label, kwargs in SETTINGS:
            pruned = hf_sparsify.prune(base, hf_sparsify.MagnitudeConfig(**kwargs)).to(dtype)
            with tempfile.TemporaryDirectory() as tmp:
                dense_dir, small_dir = Path(tmp) / "dense", Path(tmp) / "small"
                pruned.save_pretrained(dense_dir, card=False)
                start = time.perf_counter()
                pruned.save_pretrained(small_dir, card=False, compressed=True)
                save_s = time.perf_counter() - start
                start = time.perf_counter()
                reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(small_dir)
                load_s = time.perf_counter() - start
                state = pruned.state_dict()
                for key, tensor in reloaded.state_dict().items():
                    if not torch.equal(tensor, state[key]):
                        raise SystemExit(f"{name} {label} {dtype}: {key} differs after reload")
                dense = (dense_dir / "model.safetensors").stat().st_size
                small = (small_dir / "model.compressed.safetensors").stat().st_size
                encoding = json.loads((small_dir / "config.json").read_text())["hf_sparsify"]["compression"]["encoding"]
            rows.append(
                {
                    "model": name,
                    "params": sum(p.numel() for p in base.parameters()),
                    "setting": label,
                    "dtype": str(dtype).replace("torch.", ""),
                    "encoding": encoding,
                    "dense_bytes": dense,
                    "compressed_bytes": small,
                    "ratio": round(small / dense, 4),
                    "save_s": round(save_s, 2),
                    "load_s": round(load_s, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit-base", "tiny"], choices=["vit-base", "tiny"])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    rows = [row for name in args.models for row in measure(name)]
    print()
    print("| model | setting | dtype | encoding | dense MB | compressed MB | ratio | save s | load s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} ({r['params'] / 1e6:.2f}M) | {r['setting']} | {r['dtype']} | {r['encoding']} | {r['dense_bytes'] / 1e6:.2f} | "
            f"{r['compressed_bytes'] / 1e6:.2f} | {r['ratio']:.3f} | {r['save_s']} | {r['load_s']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
