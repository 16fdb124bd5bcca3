"""The recovery record a :class:`~hf_sparsify.SparseTrainer` run leaves on the model, and its model card.

After training, the model's config holds the run's record (``config.hf_sparsify["recovery"]``: optimizer steps,
epochs, pruning steps, schedule, distillation) and ``model.pruning_training`` the lines the model card shows. The
card that ``trainer.save_model()`` / ``trainer.push_to_hub()`` write is hf_sparsify's pruned-model card (sparsity,
loader snippet, chart) with transformers' training data (hyperparameters, evaluation results, tags, datasets)
merged in.

```python
>>> from hf_sparsify.trainer.model_card import card_lines, training_record
>>> record = training_record(global_step=40, epoch=2.0, history=[{"step": 0, "sparsity": 0.7}])
>>> record["pruning_steps"]
[{'step': 0, 'sparsity': 0.7}]
>>> card_lines(record, [{"step": 0, "sparsity": 0.7}])
{'trainer': 'SparseTrainer', 'optimizer steps': 40, 'epochs': 2.0, 'pruning steps': 'step 0 → 70.0%'}
```
"""

from __future__ import annotations

from typing import Any

from ..utils import get_logger
from .distillation import DistillationConfig
from .schedules import PruningSchedule

__all__ = ["card_lines", "training_record", "write_training_card"]

logger = get_logger(__name__)


def _as_list(value) -> list | None:
    if isinstance(value, str):
        return [value]
    return list(value) if value else None


def _reached(step: dict[str, Any]) -> str:
    if isinstance(step.get("sparsity"), float):
        return f" → {step['sparsity']:.1%}"
    target = step.get("target") or {}
    return "".join(f" → {name}={value!r}" for name, value in target.items())


def training_record(*, global_step: int, epoch: float | None, history: list[dict[str, Any]], schedule: PruningSchedule | None = None, distillation: DistillationConfig | None = None) -> dict[str, Any]:
    """The run's record saved in the model's config (``config.hf_sparsify["recovery"]``)."""
    return {
        "trainer": "SparseTrainer",
        "global_step": global_step,
        "epochs": round(float(epoch or 0.0), 4),
        "pruning_steps": [{"step": r["step"], "sparsity": r.get("sparsity"), **({"target": r["target"]} if "target" in r else {})} for r in history],
        "schedule": schedule.to_dict() if schedule is not None else None,
        "distillation": distillation.to_dict() if distillation is not None else None,
    }


def card_lines(record: dict[str, Any], history: list[dict[str, Any]], schedule: PruningSchedule | None = None, distillation: DistillationConfig | None = None) -> dict[str, Any]:
    """The lines of the model card's recovery section (``model.pruning_training``)."""
    card: dict[str, Any] = {"trainer": "SparseTrainer", "optimizer steps": record["global_step"], "epochs": record["epochs"]}
    if history:
        card["pruning steps"] = ", ".join(f"step {r['step']}{_reached(r)}" for r in history)
    if schedule is not None:
        card["schedule"] = schedule.describe()
    if distillation is not None:
        card["distillation from the dense model"] = distillation.describe()
    return card


def write_training_card(trainer, training: dict[str, Any], **card_kwargs) -> bool:
    """Write one model card into ``trainer.args.output_dir``: hf_sparsify's, with transformers' training summary of
    ``trainer`` (``card_kwargs`` are ``Trainer.create_model_card``'s arguments) merged into ``training``. ``False``
    when ``hf_sparsify.hub`` is unavailable (the caller falls back to transformers' card)."""
    try:
        from ..hub.card import write_model_card
    except ImportError:
        return False
    if not trainer.is_world_process_zero():
        return True
    from transformers.modelcard import TrainingSummary

    training = dict(training)
    try:
        summary = TrainingSummary.from_trainer(trainer, **card_kwargs)
    except Exception as err:  # noqa: BLE001 - the card is documentation; never fail a push on it
        logger.warning(f"SparseTrainer: transformers' training summary is unavailable ({err}); the card omits it.")
        summary = None
    if summary is not None:
        training.update({k: v for k, v in (summary.hyperparameters or {}).items() if v is not None})
        if summary.eval_results:
            training["eval_results"] = summary.eval_results
    metadata = {
        "tags": _as_list(card_kwargs.get("tags")), "datasets": _as_list(card_kwargs.get("dataset_tags")),
        "license": card_kwargs.get("license"), "language": card_kwargs.get("language"), "model_name": card_kwargs.get("model_name"),
    }
    metadata = {k: v for k, v in metadata.items() if v}
    write_model_card(trainer.args.output_dir, trainer.model, repo_id=trainer.hub_model_id, training=training, metadata=metadata or None)
    return True
