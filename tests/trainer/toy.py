"""Tiny models and data for the SparseTrainer tests (also imported by the multi-process script)."""

from __future__ import annotations

import torch
import transformers

NUM_LABELS = 5
IMAGE_SIZE = 16


def tiny_vit(seed: int = 0, num_labels: int = NUM_LABELS, cls: str = "ViTForImageClassification", **overrides):
    family = "DeiTConfig" if cls.startswith("DeiT") else "ViTConfig"
    kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=IMAGE_SIZE, patch_size=4)
    config = getattr(transformers, family)(num_labels=num_labels, **{**kwargs, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, cls)(config)


class ToyImages(torch.utils.data.Dataset):
    """Deterministic random images whose label is the brightest of ``NUM_LABELS`` horizontal bands (learnable)."""

    def __init__(self, size: int = 64, seed: int = 0, labels: bool = True):
        self.size, self.seed, self.labels = size, seed, labels

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        x = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        label = int(torch.randint(0, NUM_LABELS, (1,), generator=g))
        band = IMAGE_SIZE // NUM_LABELS
        x[:, label * band : (label + 1) * band, :] += 1.5
        item = {"pixel_values": x}
        if self.labels:
            item["labels"] = label
        return item


def training_args(output_dir, **overrides) -> transformers.TrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=1e-2, use_cpu=True, report_to=[],
        disable_tqdm=True, save_strategy="no", logging_steps=5, seed=0, dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return transformers.TrainingArguments(**kwargs)


def weights(model, names):
    return {name: model.get_submodule(name).weight.detach().clone() for name in names}


# ------------------------------------------------------------------------------------------------ a data-driven method
from dataclasses import dataclass, field  # noqa: E402

from hf_sparsify import PruningConfig  # noqa: E402
from hf_sparsify.methods import Pruner, PruningResult  # noqa: E402
from hf_sparsify.surgery import apply_masks, lowest_k_masks  # noqa: E402


@dataclass(kw_only=True)
class TaylorConfig(PruningConfig):
    """First-order Taylor pruning (|w · dL/dw| summed over calibration batches), layer-wise uniform: a small real
    data-driven method that needs labels, for tests. ``noise`` adds rank-dependent noise to the scores, so that
    processes would disagree without SparseTrainer's broadcast."""

    sparsity: float = field(default=0.5, metadata={"help": "fraction of the targeted weights removed"})
    noise: float = field(default=0.0, metadata={"help": "relative rank-dependent noise added to the scores"})

    def needs_labels(self) -> bool:
        return True

    def calibration_images(self) -> int:
        return self.num_calibration_samples or 16


class TaylorPruner(Pruner):
    config_class = TaylorConfig
    needs_calibration_data = True
    seen: list = []  # (sparsity, number of samples, sum of pixel values) per call

    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False):
        layers = adapter.select_layers(self.config.targets, self.config.ignore)
        scores = [torch.zeros_like(layer.weight) for layer in layers]
        samples, checksum = 0, 0.0
        for batch in calibration:
            model.zero_grad(set_to_none=True)
            out = model(pixel_values=batch["pixel_values"].to(device), labels=batch["labels"].to(device))
            out.loss.backward()
            for score, layer in zip(scores, layers):
                score += (layer.weight.detach() * layer.weight.grad).abs()
            samples += batch["pixel_values"].shape[0]
            checksum += float(batch["pixel_values"].sum())
        model.zero_grad(set_to_none=True)
        if self.config.noise:
            import torch.distributed as dist

            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            g = torch.Generator().manual_seed(1000 + rank)
            scores = [s * (1 + self.config.noise * torch.rand(s.shape, generator=g).to(s.device)) for s in scores]
        with torch.no_grad():
            # pruned weights (zero) keep score 0 and stay pruned
            masks = [lowest_k_masks([s], round(self.config.sparsity * s.numel()))[0] for s in scores]
            apply_masks([layer.weight for layer in layers], masks)
        type(self).seen.append((self.config.sparsity, samples, round(checksum, 3)))
        return PruningResult(method=self.config.method, layers={layer.name: {} for layer in layers})
