"""Issue 17.4: the faster linear algebra (Schur-complement inverses, lazy downdates, reused workspaces) keeps the
masks of the implementation before it, on the bundled trained ViT at the defaults (B = 192, damp = 1e-8, float64
blocks, global), for CAP and WoodFisher. The masks were saved from commit 5a9625d by the same settings
(``tests/methods/cap/data/masks_before_issue17.npz``, packed bits in the order of the adapter's prunable layers)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import hf_sparsify
from hf_sparsify.adapters import get_adapter

SAVED = Path(__file__).with_name("data") / "masks_before_issue17.npz"


@pytest.fixture(scope="module")
def bundled():
    transformers = pytest.importorskip("transformers")
    from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR

    model = transformers.AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(DEMO_MODEL_DIR)
    data = hf_sparsify.load_image_dataset(str(DEMO_DATA_DIR / "calibration.parquet"), split="train")
    return model, processor, data


@pytest.mark.parametrize("method, config_class", [("cap", hf_sparsify.CAPConfig), ("woodfisher", hf_sparsify.WoodFisherConfig)])
def test_masks_equal_those_before_the_speed_work(bundled, method, config_class):
    model, processor, data = bundled
    pruned = hf_sparsify.prune(model, config_class(num_grads=64, grad_batch_size=8), data, image_processor=processor, disable_tqdm=True)
    masks = torch.cat([layer.weight.detach().reshape(-1) != 0 for layer in get_adapter(pruned).prunable_layers()]).numpy()
    saved = np.unpackbits(np.load(SAVED)[method])[: masks.size].astype(bool)
    assert int((masks != saved).sum()) == 0
