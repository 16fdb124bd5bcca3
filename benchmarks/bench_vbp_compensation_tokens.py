"""VBP compensation, which tokens' mean to fold: an investigation of why the mean-shift fold lowers the loss but not
top-1 on the CIFAR-10 ViT (benchmarks/RESULTS.md, VBP quality).

Same widths and kept neurons as VBP (global, default normalisation, lowest variance over all tokens); only the
folded mean changes: none, the mean over all tokens (VBP), the CLS token's, the patch tokens', the all-token mean
everywhere but the CLS token's in the last block (whose output reaches the classifier only through CLS), and the
all-token mean everywhere but no fold in the last block. 1,024 random train images (seed 0), 5,000 random test
images (seed 1234). Prints one JSON line per target: [top-1 %, cross-entropy] per variant.

    python benchmarks/bench_vbp_compensation_tokens.py
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from bench_vbp_cifar10 import preprocess  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.data import random_indices  # noqa: E402
from hf_sparsify.observers import collect_activation_moments  # noqa: E402
from hf_sparsify.structured import kept_units, select_groups, shrink_group  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    transformers.logging.set_verbosity_error()
    model_dir = SHARED / "models" / "vit-tiny-cifar10"
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    train = hf_sparsify.load_image_dataset(SHARED / "data" / "cifar10", split="train")
    test = hf_sparsify.load_image_dataset(SHARED / "data" / "cifar10", split="test")
    evaluation = preprocess(test, processor, random_indices(len(test), 5000, 1234))
    labels = torch.cat([b["labels"] for b in evaluation])
    calibration = preprocess(train, processor, random_indices(len(train), 1024, 0), batch_size=128)
    groups = select_groups(get_adapter(model), ["mlp"])
    observed = {g.name: g.observe for g in groups}
    observed.update({("cls", g.name): (g.observe, slice(0, 1)) for g in groups})
    observed.update({("patch", g.name): (g.observe, slice(1, None)) for g in groups})
    moments = collect_activation_moments(model, observed, calibration, disable_tqdm=True)
    cls_mean = {g.name: moments[("cls", g.name)].mean for g in groups}
    patch_mean = {g.name: moments[("patch", g.name)].mean for g in groups}
    all_mean = {g.name: moments[g.name].mean for g in groups}
    last = groups[-1].name

    @torch.no_grad()
    def top1_and_loss(m):
        logits = torch.cat([m(pixel_values=b["pixel_values"]).logits for b in evaluation]).double()
        return [round(float((logits.argmax(-1) == labels).double().mean()) * 100, 2), round(float(torch.nn.functional.cross_entropy(logits, labels)), 3)]

    variants = {
        "no compensation": {g.name: None for g in groups},
        "all tokens (VBP)": all_mean,
        "CLS token": cls_mean,
        "patch tokens": patch_mean,
        "all tokens, CLS in the last block": {**all_mean, last: cls_mean[last]},
        "all tokens, none in the last block": {**all_mean, last: None},
    }
    for target in (0.35, 0.5):
        pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(target_macs_reduction=target, compensation=False), calibration, disable_tqdm=True)
        widths = {k: v["width"] for k, v in pruned.pruning_result.layers.items()}
        row = {"target": target, "widths": list(widths.values())}
        for name, means in variants.items():
            m = copy.deepcopy(model)
            for g in select_groups(get_adapter(m), ["mlp"]):
                shrink_group(m, g, kept_units(moments[g.name].variance, widths[g.name]), means[g.name])
            row[name] = top1_and_loss(m)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
