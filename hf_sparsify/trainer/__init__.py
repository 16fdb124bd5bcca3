"""Recovery finetuning on ``transformers.Trainer``: fixed masks, gradual pruning schedules, distillation.

```python
>>> from hf_sparsify import SparseTrainer, PruningSchedule, DistillationConfig, MagnitudeConfig
>>> trainer = SparseTrainer(model=model, args=args, train_dataset=train, data_collator=collate,
...                         pruning_config=MagnitudeConfig(sparsity=0.7), teacher_model=dense)
>>> trainer.train()
```
See ``docs/training.md``.
"""

from .distillation import DistillationConfig, DistillationError, distillation_loss, kd_loss
from .masks import MASKS_NAME, MaskState
from .schedules import PruningSchedule, PruningScheduleError, cyclic_linear_factor
from .trainer import SPARSE_STATE_NAME, SparseTrainer

__all__ = [
    "MASKS_NAME",
    "SPARSE_STATE_NAME",
    "DistillationConfig",
    "DistillationError",
    "MaskState",
    "PruningSchedule",
    "PruningScheduleError",
    "SparseTrainer",
    "cyclic_linear_factor",
    "distillation_loss",
    "kd_loss",
]
