"""hf_sparsify: prune Hugging Face vision models, recover their accuracy, publish them.

```python
>>> import hf_sparsify
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))   # a transformers ViT, DeiT...
>>> round(hf_sparsify.sparsity_report(pruned).sparsity, 2)
0.5
>>> pruned.save_pretrained(tmp_dir)                  # reloads with AutoSparseModelForImageClassification
```

The public names are imported on first use (as transformers does), so ``import hf_sparsify`` and the
``hf-sparsify`` command start without importing torch's training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "AutoSparseModel": ".modeling",
    "AutoSparseModelForImageClassification": ".modeling",
    "SparseCheckpointError": ".io.load",
    "CAPConfig": ".methods.cap",
    "FastCAPConfig": ".methods.cap",
    "WoodFisherConfig": ".methods.cap",
    "MagnitudeConfig": ".methods.magnitude",
    "VBPConfig": ".methods.vbp",
    "SOSPConfig": ".methods.sosp",
    "SOSPHConfig": ".methods.sosp",
    "SOSPIConfig": ".methods.sosp",
    "SPDYConfig": ".methods.spdy",
    "SPDYTargetError": ".methods.spdy",
    "SPDYBaseMethodError": ".methods.spdy",
    "CalibrationData": ".data",
    "CalibrationDataError": ".data",
    "load_image_dataset": ".data",
    "DistillationConfig": ".trainer",
    "PruningSchedule": ".trainer",
    "PruningScheduleError": ".trainer",
    "SparseTrainer": ".trainer",
    "HfSparsifyError": ".errors",
    "HubPushError": ".hub",
    "ModelCardTemplateError": ".hub",
    "build_model_card": ".hub",
    "push_to_hub": ".hub",
    "Pruner": ".methods.base",
    "PruningError": ".methods.base",
    "PruningResult": ".methods.base",
    "PruningConfig": ".configuration",
    "PruningConfigError": ".configuration",
    "available_methods": ".configuration",
    "register_method": ".configuration",
    "get_adapter": ".adapters",
    "supported_model_types": ".adapters",
    "UnsupportedModelError": ".adapters",
    "prune": ".api",
    "save_pretrained": ".pruned",
    "SparsityReport": ".report",
    "sparsity_report": ".report",
    "benchmark": ".speed",
    "export_onnx": ".speed",
    "LatencyCost": ".speed",
    "LatencyProfiler": ".speed",
    "BottleneckReport": ".structured.bottleneck",
    "BottleneckReportError": ".structured.bottleneck",
    "bottleneck_report": ".structured.bottleneck",
    "ExpansionError": ".expansion",
    "expand": ".expansion",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_sparsify' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .adapters import UnsupportedModelError, get_adapter, supported_model_types
    from .api import prune
    from .configuration import PruningConfig, PruningConfigError, available_methods, register_method
    from .data import CalibrationData, CalibrationDataError, load_image_dataset
    from .errors import HfSparsifyError
    from .expansion import ExpansionError, expand
    from .hub import HubPushError, ModelCardTemplateError, build_model_card, push_to_hub
    from .io.load import SparseCheckpointError
    from .methods.base import Pruner, PruningError, PruningResult
    from .methods.cap import CAPConfig, FastCAPConfig, WoodFisherConfig
    from .methods.magnitude import MagnitudeConfig
    from .methods.sosp import SOSPConfig, SOSPHConfig, SOSPIConfig
    from .methods.spdy import SPDYBaseMethodError, SPDYConfig, SPDYTargetError
    from .methods.vbp import VBPConfig
    from .modeling import AutoSparseModel, AutoSparseModelForImageClassification
    from .pruned import save_pretrained
    from .report import SparsityReport, sparsity_report
    from .speed import LatencyCost, LatencyProfiler, benchmark, export_onnx
    from .structured.bottleneck import BottleneckReport, BottleneckReportError, bottleneck_report
    from .trainer import DistillationConfig, PruningSchedule, PruningScheduleError, SparseTrainer
