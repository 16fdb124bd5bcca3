"""Shared fixtures: tiny models of every supported family built from configs in code, the bundled demo assets,
and ``../shared`` (skipped with a reason when absent, as in a user's clone)."""

from __future__ import annotations

import os
from pathlib import Path

# Offline and quiet, before transformers/datasets are imported by the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_SPARSIFY_DISABLE_TQDM", "1")
# The local Hub server (tests/hub_server.py) runs in a thread of the test process: on a loaded 2-core machine a
# training step can keep it from answering within huggingface_hub's default 10 s.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "120")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "120")
# Under pytest-xdist every worker (and the subprocesses it starts) uses one thread, so that `-n 2` on two cores
# does not run four busy threads on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
try:
    import datasets

    datasets.disable_progress_bars()
except ImportError:  # pragma: no cover
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()

# family name -> (config class name, model class name, config kwargs)
TINY_FAMILIES = {
    "vit": ("ViTConfig", "ViTForImageClassification", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)),
    "deit": ("DeiTConfig", "DeiTForImageClassification", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)),
    "deit_teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)),
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=16, patch_size=4)),
    "dinov2_swiglu": ("Dinov2Config", "Dinov2ForImageClassification", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=16, patch_size=4, use_swiglu_ffn=True)),
    "dinov2_registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=16, patch_size=4, num_register_tokens=2)),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 2], image_size=32)),
    "convnextv2": ("ConvNextV2Config", "ConvNextV2ForImageClassification", dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 2], image_size=32)),
}
BACKBONES = {
    "vit": "ViTModel",
    "deit": "DeiTModel",
    "dinov2": "Dinov2Model",
    "dinov2_swiglu": "Dinov2Model",
    "convnext": "ConvNextModel",
    "convnextv2": "ConvNextV2Model",
}


def make_tiny_model(family: str, *, backbone: bool = False, num_labels: int = 5, seed: int = 0, **overrides):
    """A tiny randomly initialised model of ``family`` (see ``TINY_FAMILIES``), in eval mode.

    Weights are perturbed away from their init (LayerScale, zero biases) so every tensor matters in tests.
    """
    config_name, model_name, kwargs = TINY_FAMILIES[family]
    kwargs = {**kwargs, **overrides}
    if not backbone:
        kwargs["num_labels"] = num_labels
    config = getattr(transformers, config_name)(**kwargs)
    cls = getattr(transformers, BACKBONES[family] if backbone else model_name)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_scale" in name or "lambda1" in name or name.endswith("bias") or "grn" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def tiny_pixel_values(model, batch: int = 4, seed: int = 0) -> torch.Tensor:
    size = model.config.image_size if hasattr(model.config, "image_size") else 32
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.num_channels, size, size, generator=g)


def tiny_batches(model, num_batches: int = 2, batch: int = 4, num_labels: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num_batches):
        out.append({"pixel_values": tiny_pixel_values(model, batch, seed + i), "labels": torch.randint(0, num_labels, (batch,), generator=g)})
    return out


@pytest.fixture(params=sorted(TINY_FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family):
    return make_tiny_model(family)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared is absent ({SHARED_DIR}): these tests need the shared CIFAR-10 data and trained model")
    return SHARED_DIR


@pytest.fixture(scope="session")
def cifar10_dir(shared_dir) -> Path:
    path = shared_dir / "data" / "cifar10"
    if not (path / "test.parquet").exists():
        pytest.skip(f"{path} has no test.parquet")
    return path


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from hf_sparsify.assets import DEMO_MODEL_DIR

    return DEMO_MODEL_DIR


@pytest.fixture(scope="session")
def demo_model(demo_model_dir):
    return transformers.AutoModelForImageClassification.from_pretrained(demo_model_dir).eval()


@pytest.fixture(scope="session")
def demo_processor(demo_model_dir):
    return transformers.AutoImageProcessor.from_pretrained(demo_model_dir)


@pytest.fixture(scope="session")
def demo_calibration():
    from hf_sparsify.assets import demo_dataset

    return demo_dataset("calibration")


@pytest.fixture(scope="session")
def demo_evaluation():
    from hf_sparsify.assets import demo_dataset

    return demo_dataset("evaluation")


@pytest.fixture
def tiny_factory():
    """``make_tiny_model(family, backbone=False, num_labels=5, seed=0, **config_overrides)``."""
    return make_tiny_model


# A test-only method that needs labelled calibration data: it records the mean loss it saw.
from dataclasses import dataclass, field  # noqa: E402

from hf_sparsify import Pruner, PruningConfig, PruningResult  # noqa: E402


@dataclass(kw_only=True)
class LossConfig(PruningConfig):
    sparsity: float = field(default=0.5, metadata={"help": "unused"})

    def needs_labels(self) -> bool:
        return True


class LossPruner(Pruner):
    """A test method that needs labelled calibration data: it records the mean loss it saw."""

    config_class = LossConfig
    needs_calibration_data = True

    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False):
        losses = [model(**batch).loss.item() for batch in calibration]
        return PruningResult(method="test-loss", info={"batches": len(losses), "mean_loss": sum(losses) / len(losses)})


@pytest.fixture
def loss_method():
    """Register the "test-loss" method for one test and remove it afterwards (the registry stays clean)."""
    from hf_sparsify import configuration

    configuration.register_method("test-loss", LossConfig, LossPruner)
    yield "test-loss"
    configuration._METHODS.pop("test-loss", None)


# ------------------------------------------------------------------------------------------------ the local Hub server
# One real local Hub server (tests/hub_server.py) per test process, shared by every test that uploads. huggingface_hub
# reads HF_ENDPOINT/HF_HUB_OFFLINE/HF_HOME when it is imported (this file makes the suite offline), so the ``hub``
# fixture sets both the environment (for subprocesses) and the already-read constants (for this process), with a
# temporary HF_HOME and a dummy token the server accepts.
import itertools  # noqa: E402

from huggingface_hub import constants as _hub_constants  # noqa: E402

from tests.hub_server import LocalHub  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="session")
def local_hub():
    server = LocalHub().start()
    yield server
    server.stop()


@pytest.fixture
def hub(local_hub, tmp_path, monkeypatch):
    """The server, with this process and its subprocesses pointed at it (online, a fresh cache, a valid token)."""
    home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": local_hub.url,
        "HF_TOKEN": local_hub.token,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(_hub_constants, "ENDPOINT", local_hub.url)
    monkeypatch.setattr(_hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(_hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(_hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(_hub_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(_hub_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    local_hub.clear_faults()
    yield local_hub
    local_hub.clear_faults()


@pytest.fixture
def repo_name():
    """A fresh repo name per test (the server lives for the whole session)."""
    return f"pruned-{next(_names)}"
