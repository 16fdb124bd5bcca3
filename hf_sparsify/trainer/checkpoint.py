"""What a :class:`~hf_sparsify.SparseTrainer` checkpoint holds beside the Trainer's files, and strict loading.

A ``checkpoint-N/`` folder also holds the masks (``sparsity_masks.safetensors``) and the schedule state
(``sparse_trainer_state.json``: the planned pruning points, the steps done, the configurations), so that a resumed
run continues with the same masks and the same next pruning step. Weights are loaded through ``from_pretrained``
(converted key names, strict), not with the Trainer's non-strict ``load_state_dict``.

```python
>>> from hf_sparsify.trainer import MaskState
>>> from hf_sparsify.trainer.checkpoint import read_sparse_state, restore_sparse_state, write_sparse_state
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
>>> write_sparse_state(tmp_dir, MaskState.from_weights(pruned), {"points": [[0, 0.5]], "completed": [{"step": 0, "sparsity": 0.5}]})
>>> read_sparse_state(tmp_dir)["completed"]
[{'step': 0, 'sparsity': 0.5}]
>>> history, masks = restore_sparse_state(tmp_dir, pruned, planned_points=[(0, 0.5)])
>>> round(masks.sparsity()["global"], 3)
0.5
```
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from ..utils import get_logger
from .masks import MASKS_NAME, MaskState
from .schedules import PruningScheduleError

__all__ = ["SPARSE_STATE_NAME", "load_checkpoint_weights", "load_structured_model", "read_sparse_state", "restore_sparse_state", "write_sparse_state"]

logger = get_logger(__name__)

SPARSE_STATE_NAME = "sparse_trainer_state.json"
_STATE_FORMAT = 1


def write_sparse_state(folder: str | os.PathLike, masks: MaskState, state: dict[str, Any]) -> None:
    """Write ``masks`` (``sparsity_masks.safetensors``) and ``state`` (``sparse_trainer_state.json``, with its
    format number) into ``folder``."""
    folder = str(folder)
    masks.save(os.path.join(folder, MASKS_NAME))
    with open(os.path.join(folder, SPARSE_STATE_NAME), "w", encoding="utf-8") as f:
        json.dump({"format": _STATE_FORMAT, **state}, f, indent=2)


def read_sparse_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The schedule state saved in ``folder`` (``None`` when the folder has none)."""
    path = os.path.join(str(folder), SPARSE_STATE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def restore_sparse_state(folder: str | os.PathLike, model: nn.Module, planned_points: list[tuple[int, Any]]) -> tuple[list[dict[str, Any]], MaskState] | None:
    """``(pruning steps done, masks)`` saved in ``folder``, for ``model``; ``None`` when the folder holds no
    SparseTrainer state. A checkpoint written with other pruning points than ``planned_points`` is refused."""
    folder = str(folder)
    state = read_sparse_state(folder)
    masks_path = os.path.join(folder, MASKS_NAME)
    if state is None or not os.path.isfile(masks_path):
        return None
    saved = [tuple(p) for p in state.get("points") or []]
    planned = [tuple(p) for p in planned_points or []]
    if saved != planned:
        raise PruningScheduleError(
            f"the checkpoint {folder} was written with pruning points {saved}, but this run plans {planned}: resume "
            "with the same pruning_config, schedule and training length."
        )
    return list(state.get("completed") or []), MaskState.load(model, masks_path)


def load_structured_model(folder: str | os.PathLike) -> nn.Module:
    """The model saved in ``folder`` with its own (possibly structurally pruned) shapes."""
    from ..modeling import AutoSparseModelForImageClassification

    return AutoSparseModelForImageClassification.from_pretrained(folder)


def load_checkpoint_weights(target: nn.Module, folder: str | os.PathLike) -> bool:
    """Load the weights saved in ``folder`` into ``target`` through ``from_pretrained``, which converts transformers'
    saved key names, strictly; ``False`` (nothing loaded) when ``target`` is not a ``PreTrainedModel`` or the folder
    has no ``config.json``.

    transformers 5.x saves ViT/DeiT/DINOv2 weights under their 4.x names (``vit.encoder.layer.N...``) while
    ``Trainer._load_from_checkpoint`` calls a non-strict ``load_state_dict``: the encoder weights would silently
    keep their pre-resume values. Here they load strictly, converted, and structured shapes are honoured.
    """
    from transformers import PreTrainedModel

    from ..io.load import from_pretrained_strict
    from ..surgery.shapes import is_structured

    folder = str(folder)
    if not isinstance(target, PreTrainedModel) or not os.path.isfile(os.path.join(folder, "config.json")):
        return False
    config = type(target.config).from_pretrained(folder)
    loaded = load_structured_model(folder) if is_structured(config) else from_pretrained_strict(type(target), folder, config=config)
    target.load_state_dict(loaded.state_dict(), strict=True)
    logger.info(f"SparseTrainer: loaded the weights of {folder} (strict, converted key names).")
    return True
