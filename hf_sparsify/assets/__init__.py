"""Bundled demo assets: a trained tiny ViT for CIFAR-10 and a class-balanced CIFAR-10 sample (see the READMEs)."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEMO_MODEL_DIR = ASSETS_DIR / "vit-tiny-cifar10"
DEMO_DATA_DIR = ASSETS_DIR / "cifar10-sample"

__all__ = ["ASSETS_DIR", "DEMO_MODEL_DIR", "DEMO_DATA_DIR", "demo_dataset"]


def demo_dataset(part: str = "evaluation"):
    """The bundled CIFAR-10 sample: ``"calibration"`` (1,000 train images) or ``"evaluation"`` (2,000 test images)."""
    import datasets

    if part not in ("calibration", "evaluation"):
        raise ValueError(f"part must be 'calibration' or 'evaluation', got {part!r}")
    return datasets.load_dataset("parquet", data_files={part: str(DEMO_DATA_DIR / f"{part}.parquet")}, split=part)
