"""Recovery finetuning on ``transformers.Trainer``: fixed masks, gradual pruning schedules, distillation.

The modules, one job each: :mod:`.trainer` (``SparseTrainer``, the ``Trainer`` subclass that ties them together),
:mod:`.masks` (the masks kept through optimizer steps), :mod:`.schedules` (when to prune, to which target),
:mod:`.pruning` (set-up checks, a schedule's points in optimizer steps, one pruning step), :mod:`.calibration`
(the data a pruning step reads), :mod:`.distillation` (the loss), :mod:`.sync` (agreement across processes),
:mod:`.checkpoint` (masks and schedule state in checkpoints, strict loading) and :mod:`.model_card` (the run's
record and card).

```python
>>> from hf_sparsify.trainer import SparseTrainer
>>> from transformers import TrainingArguments
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.7))
>>> trainer = SparseTrainer(model=pruned, args=TrainingArguments(tmp_dir, use_cpu=True, report_to=[]))
>>> round(trainer.masks.sparsity()["global"], 3)
0.7
```
See ``docs/training.md``.
"""

from .distillation import DistillationConfig, DistillationError, distillation_loss, kd_loss
from .masks import MASKS_NAME, MaskState
from .schedules import PruningSchedule, PruningScheduleError, cyclic_linear_factor
from .sync import MasksDifferError
from .trainer import SPARSE_STATE_NAME, SparseTrainer

__all__ = [
    "MASKS_NAME",
    "SPARSE_STATE_NAME",
    "DistillationConfig",
    "DistillationError",
    "MaskState",
    "MasksDifferError",
    "PruningSchedule",
    "PruningScheduleError",
    "SparseTrainer",
    "cyclic_linear_factor",
    "distillation_loss",
    "kd_loss",
]
