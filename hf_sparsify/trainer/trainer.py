"""``SparseTrainer``: transformers' ``Trainer`` for recovery finetuning of pruned models.

Two lines change in an existing Trainer script (here on the bundled tiny ViT and its CIFAR-10 images):

```python
>>> import copy
>>> from transformers import TrainingArguments
>>> from hf_sparsify import SparseTrainer, MagnitudeConfig, PruningSchedule          # 1
>>> def collate(rows):
...     pixels = processor([row["image"] for row in rows], return_tensors="pt")["pixel_values"]
...     return {"pixel_values": pixels, "labels": torch.tensor([row["label"] for row in rows])}
>>> args = TrainingArguments(tmp_dir, max_steps=4, per_device_train_batch_size=16, use_cpu=True, report_to=[],
...                          remove_unused_columns=False, disable_tqdm=True)
>>> trainer = SparseTrainer(                                                          # 2: was Trainer(
...     model=model, args=args, train_dataset=calibration, data_collator=collate,
...     pruning_config=MagnitudeConfig(sparsity=0.5),       # prune (one-shot before the first step by default)
...     schedule=PruningSchedule.gradual(initial_sparsity=0.3, end=2, every=2),  # or prune gradually
...     teacher_model=copy.deepcopy(model),                  # distil from the dense model
... )
>>> result = trainer.train()       # the Trainer prints its logs, with the sparsity of every pruning step
{'sparsity': '0.3', 'pruning_steps': 1, 'pruning_time': ..., 'sparsity_target': '0.3', ...}
{'sparsity': '0.5', 'pruning_steps': 2, 'pruning_time': ..., 'sparsity_target': '0.5', ...}
{'train_runtime': ...}
>>> [(step["step"], step["sparsity"]) for step in trainer.pruning_history]
[(0, 0.3), (2, 0.5)]
>>> trainer.save_model(f"{tmp_dir}/vit-50")   # reloads with hf_sparsify.AutoSparseModelForImageClassification
>>> round(hf_sparsify.sparsity_report(trainer.model).sparsity, 3)
0.5
```

What it adds to ``Trainer``:

* **Fixed masks.** Pruned weights stay exactly zero through every optimizer step (AdamW weight decay, gradient
  clipping, gradient accumulation, fp16/bf16 mixed precision, ``torch.compile``): gradients of pruned entries are
  zeroed as they are computed and the masks are re-applied after every optimizer step (:mod:`.masks`). A model
  pruned before (any method) keeps the zeros it has; a structurally pruned (physically smaller) model simply trains.
* **Pruning during training.** With ``pruning_config`` the method runs at the points of ``schedule`` (one-shot
  before the first step by default; :mod:`.pruning`), each time on fresh calibration batches drawn at random from
  the training data or ``calibration_dataset`` (:mod:`.calibration`); optionally CAP's cyclic linear learning rate
  that restarts at each step (:mod:`.schedules`).
* **Distillation** from ``teacher_model`` (:mod:`.distillation`).
* **Logs** ``sparsity`` (global, measured), ``sparsity_target``, ``pruning_steps``, ``teacher_loss`` and
  ``label_loss`` with every training log, and ``sparsity/<layer>`` at every pruning step, through ``Trainer.log``
  (so TensorBoard / ``report_to`` get them).
* **Checkpoints** hold the masks and the schedule state; ``resume_from_checkpoint`` continues with the same masks
  and the same next pruning step, and weights load strictly (:mod:`.checkpoint`).
* **Accelerate.** The same script runs on 1 or N processes: every process runs the pruning method, rank 0's pruned
  weights are then broadcast and the masks checked identical on every process (:mod:`.sync`).
* **One model card**: hf_sparsify's, with transformers' training data merged in (:mod:`.model_card`).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, has_length

from ..adapters import get_adapter
from ..configuration import PruningConfig
from ..pruned import attach_pruning_state
from ..surgery.shapes import get_metadata
from ..utils import get_logger
from .calibration import PruningCalibration, check_calibration_dataset
from .checkpoint import SPARSE_STATE_NAME, load_checkpoint_weights, load_structured_model, read_sparse_state, restore_sparse_state, write_sparse_state
from .distillation import DistillationConfig, DistillationError, LossParts, check_teacher, distillation_loss, label_logits
from .masks import MASKS_NAME, MaskState, _select_layer_names
from .model_card import card_lines, training_record, write_training_card
from .pruning import check_pruning_setup, config_at, describe_step, due_point, resolve_points, run_pruning_step, sparsity_log_entries
from .schedules import PruningSchedule, PruningScheduleError, cyclic_lr_scheduler
from .sync import broadcast_from_main_process, check_masks_identical

__all__ = ["SparseTrainer", "SPARSE_STATE_NAME"]

logger = get_logger(__name__)


class _SparsityCallback(TrainerCallback):
    """Drives the sparse side of training from the Trainer's events."""

    def __init__(self, trainer: "SparseTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._on_train_begin()

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._maybe_prune()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.masks is not None:
            self.trainer.masks.apply()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._on_train_end()


class SparseTrainer(Trainer):
    """``transformers.Trainer`` that keeps sparsity exact, prunes (one-shot or gradually), distils from a teacher,
    and checkpoints its masks. Takes every argument of ``Trainer`` plus:

    Args:
        pruning_config: what to prune with, any method of the registry (``MagnitudeConfig``, ``CAPConfig``...),
            or a dict / ``pruning_config.json`` path. ``None`` trains the model as it is, keeping the zeros it has.
        schedule: when to prune (a :class:`~hf_sparsify.PruningSchedule`); default
            ``PruningSchedule.one_shot()``: once, before the first optimizer step, at the config's target. The
            target of each pruning step replaces the config's target field (``config.target_field``: ``sparsity``;
            VBP's ``pruning_ratio``). Methods that change shapes only run one-shot at step 0, and a target that is
            not interpolable (``config.target_interpolable``) cannot be ramped.
        teacher_model: the dense model to distil from (same label space as the student); frozen, in eval mode,
            moved to the training device. Not wrapped for data parallelism: every process runs it on its own batch.
        distillation: the loss settings (:class:`~hf_sparsify.DistillationConfig`); default when a teacher is given.
        calibration_dataset: where pruning steps draw calibration samples (default: ``train_dataset``); it goes
            through the Trainer's data collator, so it has the training data's format.

    A model pruned before keeps its zeros through training:

    ```python
    >>> from transformers import TrainingArguments
    >>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.6))
    >>> trainer = SparseTrainer(model=pruned, args=TrainingArguments(tmp_dir, use_cpu=True, report_to=[]))
    >>> round(trainer.masks.sparsity()["global"], 3)       # the masks kept through every optimizer step
    0.6
    ```
    """

    def __init__(
        self,
        *args,
        pruning_config: PruningConfig | dict | str | os.PathLike | None = None,
        schedule: PruningSchedule | None = None,
        teacher_model: nn.Module | None = None,
        distillation: DistillationConfig | None = None,
        calibration_dataset=None,
        **kwargs,
    ):
        if pruning_config is not None and not isinstance(pruning_config, PruningConfig):
            pruning_config = PruningConfig.from_pretrained(pruning_config)
        if schedule is not None and not isinstance(schedule, PruningSchedule):
            raise TypeError(f"schedule must be a hf_sparsify.PruningSchedule, got {type(schedule).__name__}.")
        if schedule is not None and pruning_config is None:
            raise PruningScheduleError("a pruning schedule needs pruning_config= (the method to run at each pruning step).")
        if distillation is not None and teacher_model is None:
            raise DistillationError("distillation= was given without teacher_model=: pass the dense model to distil from.")
        if distillation is not None and not isinstance(distillation, DistillationConfig):
            raise TypeError(f"distillation must be a hf_sparsify.DistillationConfig, got {type(distillation).__name__}.")
        self.pruning_config = pruning_config
        self.schedule = schedule if schedule is not None or pruning_config is None else PruningSchedule.one_shot()
        self.teacher_model = teacher_model
        self.distillation = distillation if distillation is not None or teacher_model is None else DistillationConfig()
        self.calibration_dataset = calibration_dataset
        self.masks: MaskState | None = None
        self.pruning_history: list[dict[str, Any]] = []
        self._pruner_class = None
        self._points: list[tuple[int, Any]] | None = None
        self._steps_per_epoch: int | None = None
        self._resume_dir: str | None = None
        self._loss_parts = LossParts()
        self._calibration: PruningCalibration | None = None

        super().__init__(*args, **kwargs)

        if self.model_init is not None:
            raise ValueError("SparseTrainer needs model=, not model_init= (re-initialising the model would lose its masks).")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "SparseTrainer keeps masks on whole (unsharded) weights: DeepSpeed and FSDP are not supported. Use "
                "data parallelism (accelerate launch / torchrun without --fsdp or --deepspeed)."
            )
        model = self.model
        # (class-token logits key, distillation-token logits key) when the model has a second head (DeiT with teacher)
        self._distillation_heads = get_adapter(model, allow_generic=True).distillation_outputs()
        if self._distillation_heads is not None and not self.label_names:
            self.label_names = ["labels"]  # DeiT's teacher head takes no labels, but the batches carry them
        if self.teacher_model is not None:
            check_teacher(model, self.teacher_model)
            self.teacher_model.eval().requires_grad_(False)
            self.teacher_model.to(self.args.device)
        if self.teacher_model is not None or self._distillation_heads is not None:
            self.loss_is_scaled_for_ga = False  # our loss is a per-batch mean
        if self.pruning_config is not None:
            self._check_pruning_setup()
        if self.args.load_best_model_at_end and self.schedule is not None and len(self.schedule.times()) > 1:
            warnings.warn(
                "load_best_model_at_end with a gradual schedule may load a checkpoint from before the last pruning "
                "step (a lower sparsity): compare checkpoints at the final sparsity only.",
                UserWarning,
                stacklevel=2,
            )
        existing = getattr(model, "pruning_config", None)
        self.masks = MaskState.from_weights(model, config=self.pruning_config or existing)
        self.add_callback(_SparsityCallback(self))

    # ------------------------------------------------------------------------------------------ set-up checks
    def _check_pruning_setup(self) -> None:
        config = self.pruning_config
        self._pruner_class = check_pruning_setup(config, self.schedule)
        if self._pruner_class.changes_shapes and self.optimizer is not None:
            raise ValueError(
                f"{config.method} changes the model's shapes before training, so the optimizer must be created "
                "afterwards: do not pass optimizers=(...)."
            )
        if self._pruner_class.needs_calibration_data:
            self._pruning_calibration().check_labels(config)

    def _pruning_calibration(self) -> PruningCalibration:
        """The calibration source of the pruning steps (built once): the dataset with the Trainer's unused columns
        removed and the Trainer's data collator."""
        if self._calibration is None:
            source = "calibration_dataset" if self.calibration_dataset is not None else "train_dataset"
            dataset = self.calibration_dataset if self.calibration_dataset is not None else self.train_dataset
            check_calibration_dataset(dataset, self.pruning_config.method, source)
            collate_fn = None
            try:
                import datasets

                if isinstance(dataset, datasets.Dataset):
                    dataset = self._remove_unused_columns(dataset, description="calibration")
                    collate_fn = self.data_collator
            except ImportError:  # pragma: no cover
                pass
            if collate_fn is None:
                collate_fn = self._get_collator_with_removed_columns(self.data_collator, description="calibration")
            self._calibration = PruningCalibration(
                dataset, collate_fn, source=source,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
        return self._calibration

    def _disable_bars(self) -> bool:
        return bool(self.args.disable_tqdm) or not self.is_local_process_zero()

    def _target_is_sparsity(self) -> bool:
        """Whether the config's target is a fraction of the weights, recorded as ``sparsity`` and logged as
        ``sparsity_target`` (an interpolable target is; a speed-up, which a schedule may not ramp, is recorded as
        ``target`` only)."""
        return self.pruning_config is None or self.pruning_config.target_interpolable

    # ------------------------------------------------------------------------------------------ schedule
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._steps_per_epoch = values[1] if has_length(dataloader) else None
        return values

    def _resolve_points(self, max_steps: int) -> list[tuple[int, Any]]:
        if self.pruning_config is None:
            return []
        return resolve_points(self.pruning_config, self.schedule, self._steps_per_epoch, max_steps)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.schedule is None or not self.schedule.cyclic_lr or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.args.get_warmup_steps(num_training_steps) > 0:
            logger.warning("SparseTrainer: warmup is ignored with the cyclic linear learning rate (cyclic_lr=True).")
        boundaries = [step for step, _ in self._resolve_points(num_training_steps)]
        optimizer = optimizer if optimizer is not None else self.optimizer
        self.lr_scheduler = cyclic_lr_scheduler(optimizer, self.schedule, boundaries, num_training_steps, self.args.learning_rate)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # ------------------------------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint`` also restores the masks and the schedule state."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        elif resume_from_checkpoint is False:
            resume_from_checkpoint = None
        self._resume_dir = str(resume_from_checkpoint) if resume_from_checkpoint is not None else None
        if self._pruner_class is not None and self._pruner_class.changes_shapes:
            if self._resume_dir is not None:
                self._reload_structured(self._resume_dir)
            elif not self.pruning_history:
                self._points = [(0, self.schedule.points(self.pruning_config.target)[0][1])]
                self._prune_step(0)  # before the optimizer exists: shapes change
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _reload_structured(self, checkpoint: str) -> None:
        """Resuming after a structured one-shot step: rebuild the model with the checkpoint's shapes."""
        state = read_sparse_state(checkpoint)
        if state is None or not state.get("completed"):
            return
        model = load_structured_model(checkpoint)
        model.to(self.args.device)
        self.model = self.model_wrapped = model
        self.callback_handler.model = model
        self.pruning_history = list(state["completed"])
        self.masks = MaskState.from_weights(model, config=self.pruning_config)

    def _on_train_begin(self) -> None:
        self._points = self._resolve_points(self.state.max_steps)
        restored = self._resume_dir is not None and self._restore_state(self._resume_dir)
        if self._resume_dir is not None and not restored and self.pruning_config is not None:
            # a checkpoint without SparseTrainer state: the zeros are the masks, the step tells what is done
            done = [{"step": s, "sparsity": sp, "restored_from_weights": True} for s, sp in self._points if s < self.state.global_step]
            self.pruning_history = done
            self.masks = MaskState.from_weights(self.model, config=self.pruning_config)
        self.masks.apply()
        self.masks.attach_gradient_hooks()
        check_masks_identical(self.masks, self.accelerator)
        self._loss_parts.reset()

    def _on_train_end(self) -> None:
        if self.masks is not None:
            self.masks.detach_gradient_hooks()
        if getattr(self.model, "config", None) is None:
            return
        record = self._training_record()
        get_metadata(self.model.config)["recovery"] = record
        # shown by the model card that save_model() / push_to_hub() write (hf_sparsify.hub.card)
        self.model.pruning_training = card_lines(record, self.pruning_history, self.schedule, self.distillation)

    def _training_record(self) -> dict[str, Any]:
        return training_record(
            global_step=self.state.global_step, epoch=self.state.epoch, history=self.pruning_history,
            schedule=self.schedule, distillation=self.distillation,
        )

    def _maybe_prune(self) -> None:
        if not self._points:
            return
        index = due_point(self._points, len(self.pruning_history), self.state.global_step)
        if index is not None:
            self._prune_step(index)

    # ------------------------------------------------------------------------------------------ pruning
    def _prune_step(self, index: int) -> None:
        step, target = self._points[index]
        config = config_at(self.pruning_config, target)
        desc = describe_step(index, len(self._points), config)
        calibration = self._pruning_calibration().batches(index, config, desc + ": calibration") if self._pruner_class.needs_calibration_data else None
        model = self.model
        started = time.perf_counter()
        logger.info(f"SparseTrainer: {desc} at optimizer step {self.state.global_step}.")
        run_pruning_step(model, config, calibration, index=index, disable_tqdm=self._disable_bars())
        broadcast_from_main_process(model, self.accelerator)  # methods may differ across processes in rounding or data
        if not self._pruner_class.changes_shapes:
            self.masks.update_from_weights(_select_layer_names(model, config))
        else:
            self.masks = MaskState.from_weights(model, config=config)
        check_masks_identical(self.masks, self.accelerator)
        seconds = time.perf_counter() - started
        measured = self.masks.sparsity()
        target_is_sparsity = self._target_is_sparsity()
        record = {
            "step": self.state.global_step, "planned_step": step, "sparsity": config.target if target_is_sparsity else None,
            "measured_sparsity": measured["global"], "seconds": round(seconds, 3),
        }
        if not target_is_sparsity:
            record["target"] = {config.target_field: config.target}
        self.pruning_history.append(record)
        logger.info(f"SparseTrainer: {desc} done in {seconds:.1f} s; measured sparsity {measured['global']:.2%}.")
        if not self._pruner_class.changes_shapes or self.state.global_step > 0:
            logs = {"sparsity": measured["global"], "pruning_steps": len(self.pruning_history), "pruning_time": seconds}
            if isinstance(config.target, float) and target_is_sparsity:
                logs["sparsity_target"] = config.target
            logs.update({f"sparsity/{name}": value for name, value in measured["layers"].items()})
            self.log(logs)

    # ------------------------------------------------------------------------------------------ loss and logs
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher_model is None and self._distillation_heads is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        labels = inputs.get("labels")
        student_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**student_inputs)
        heads = self._distillation_heads if model.training else None  # in eval, the model's `logits` (heads averaged)
        if model.training and self.teacher_model is not None:
            with torch.no_grad(), self.accelerator.autocast():
                teacher_logits = self.teacher_model(**student_inputs).logits
            loss, parts = distillation_loss(
                outputs, teacher_logits, labels, self.distillation, label_smoothing=self.args.label_smoothing_factor, heads=heads
            )
            self._loss_parts.add(parts)
        else:
            if labels is None:
                raise ValueError("SparseTrainer needs 'labels' in the batches to compute a loss.")
            logits = label_logits(outputs, heads)
            loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs and self.state.global_step is not None and self.masks is not None and self.is_in_train:
            logs.update(self._loss_parts.averages(lambda value: self.accelerator.reduce(value.to(self.args.device), reduction="mean")))
            logs.update(sparsity_log_entries(self.masks, self.pruning_history, target_is_sparsity=self._target_is_sparsity()))
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        if self.args.should_save and self.masks is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            self.save_sparse_state(folder)
        super()._save_checkpoint(model, trial)

    def save_sparse_state(self, folder: str | os.PathLike) -> None:
        """Write the masks (``sparsity_masks.safetensors``) and the schedule state (``sparse_trainer_state.json``)."""
        write_sparse_state(folder, self.masks, {
            "global_step": self.state.global_step,
            "points": [list(p) for p in (self._points or [])],
            "completed": self.pruning_history,
            "pruning_config": self.pruning_config.to_dict() if self.pruning_config is not None else None,
            "schedule": self.schedule.to_dict() if self.schedule is not None else None,
            "distillation": self.distillation.to_dict() if self.distillation is not None else None,
            "steps_per_epoch": self._steps_per_epoch,
        })

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Load the checkpoint's weights strictly, through ``from_pretrained`` (see :mod:`.checkpoint`)."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not load_checkpoint_weights(target, resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        return None

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's weights through the same strict, converting loader, and
        its masks."""
        best = self.state.best_model_checkpoint
        if best is None or self.is_deepspeed_enabled or not os.path.isfile(os.path.join(best, "config.json")):
            return super()._load_best_model()
        logger.info(f"SparseTrainer: loading the best model from {best} (score: {self.state.best_metric}).")
        self._load_from_checkpoint(best)
        masks_path = os.path.join(best, MASKS_NAME)
        if os.path.isfile(masks_path):
            hooked = self.masks is not None and self.masks._hooks_enabled
            if self.masks is not None:
                self.masks.detach_gradient_hooks()
            self.masks = MaskState.load(self.model, masks_path)
            if hooked:
                self.masks.attach_gradient_hooks()
        return None

    def _restore_state(self, folder: str) -> bool:
        restored = restore_sparse_state(folder, self.model, self._points)
        if restored is None:
            logger.warning(f"SparseTrainer: {folder} holds no SparseTrainer state; masks are read off the weights' zeros.")
            return False
        self.pruning_history, self.masks = restored
        logger.info(
            f"SparseTrainer: resumed {len(self.masks)} masks and {len(self.pruning_history)} completed pruning steps from {folder}."
        )
        return True

    # ------------------------------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; the folder also holds ``pruning_config.json`` and ``sparsity_summary.json`` and
        reloads with :class:`hf_sparsify.AutoSparseModelForImageClassification`."""
        model = self.model
        if getattr(model, "config", None) is not None and "save_pretrained" not in vars(model):
            attach_pruning_state(model)  # route through hf_sparsify's save (summary, shapes, pruning_config.json)
        super().save_model(output_dir, _internal_call=_internal_call)

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None, tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> None:
        """One model card: hf_sparsify's pruned-model card (sparsity, loader snippet, chart) with transformers'
        training card data merged in (hyperparameters, evaluation results, tags, datasets). Falls back to
        transformers' card when ``hf_sparsify.hub`` is unavailable."""
        kwargs = dict(language=language, license=license, tags=tags, model_name=model_name, finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags, dataset=dataset, dataset_args=dataset_args)
        training = getattr(self.model, "pruning_training", None) or self._training_record()
        if not write_training_card(self, training, **kwargs):
            return super().create_model_card(**kwargs)
        return None
