"""hf_sparsify: prune Hugging Face vision models, recover their accuracy, publish them.

```python
>>> import hf_sparsify
>>> from transformers import AutoModelForImageClassification
>>> model = AutoModelForImageClassification.from_pretrained("google/vit-base-patch16-224")
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
>>> print(hf_sparsify.sparsity_report(pruned))
>>> pruned.save_pretrained("vit-base-50")
```
"""

__version__ = "0.1.0"

from .adapters import get_adapter, supported_model_types  # noqa: E402
from .api import prune  # noqa: E402
from .configuration import PruningConfig, PruningConfigError, available_methods, register_method  # noqa: E402
from .data import CalibrationData, CalibrationDataError, load_image_dataset  # noqa: E402
from .hub import HubPushError, ModelCardTemplateError, build_model_card, push_to_hub  # noqa: E402
from .io import save_pretrained  # noqa: E402
from .methods import CAPConfig, FastCAPConfig, MagnitudeConfig, Pruner, PruningError, PruningResult, VBPConfig, WoodFisherConfig  # noqa: E402
from .modeling import AutoSparseModel, AutoSparseModelForImageClassification, SparseCheckpointError  # noqa: E402
from .report import SparsityReport, sparsity_report  # noqa: E402
from .trainer import DistillationConfig, PruningSchedule, PruningScheduleError, SparseTrainer  # noqa: E402

__all__ = [
    "AutoSparseModel",
    "AutoSparseModelForImageClassification",
    "CAPConfig",
    "CalibrationData",
    "CalibrationDataError",
    "DistillationConfig",
    "FastCAPConfig",
    "HubPushError",
    "MagnitudeConfig",
    "ModelCardTemplateError",
    "Pruner",
    "PruningConfig",
    "PruningConfigError",
    "PruningError",
    "PruningResult",
    "PruningSchedule",
    "PruningScheduleError",
    "SparseCheckpointError",
    "SparseTrainer",
    "SparsityReport",
    "VBPConfig",
    "WoodFisherConfig",
    "__version__",
    "available_methods",
    "build_model_card",
    "get_adapter",
    "load_image_dataset",
    "prune",
    "push_to_hub",
    "register_method",
    "save_pretrained",
    "sparsity_report",
    "supported_model_types",
]
