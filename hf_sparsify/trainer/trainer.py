"""``SparseTrainer``: transformers' ``Trainer`` for recovery finetuning of pruned models.

Two lines change in an existing Trainer script:

```python
>>> from hf_sparsify import SparseTrainer, CAPConfig, PruningSchedule          # 1
>>> trainer = SparseTrainer(                                                     # 2: was Trainer(
...     model=model, args=training_args, train_dataset=train, eval_dataset=test, data_collator=collate,
...     pruning_config=CAPConfig(sparsity=0.7),              # prune (one-shot before the first step by default)
...     schedule=PruningSchedule.gradual(initial_sparsity=0.4, end=2000, every=500),   # or prune gradually
...     teacher_model=dense_model,                            # distil from the dense model
... )
>>> trainer.train()
>>> trainer.save_model("vit-cap-70")     # reloads with hf_sparsify.AutoSparseModelForImageClassification
```

What it adds to ``Trainer``:

* **Fixed masks.** Pruned weights stay exactly zero through every optimizer step (AdamW weight decay, gradient
  clipping, gradient accumulation, fp16/bf16 mixed precision, ``torch.compile``): gradients of pruned entries are
  zeroed as they are computed and the masks are re-applied after every optimizer step. A model pruned before
  (any method) keeps the zeros it has; a structurally pruned (physically smaller) model simply trains.
* **Pruning during training.** With ``pruning_config`` the method runs at the points of ``schedule`` (one-shot
  before the first step by default), each time on fresh calibration batches drawn at random from the training
  data (or ``calibration_dataset``); optionally CAP's cyclic linear learning rate that restarts at each step.
* **Distillation** from ``teacher_model`` (see :mod:`hf_sparsify.trainer.distillation`).
* **Logs** ``sparsity`` (global, measured), ``sparsity_target``, ``pruning_steps``, ``teacher_loss`` and
  ``label_loss`` with every training log, and ``sparsity/<layer>`` at every pruning step, through ``Trainer.log``
  (so TensorBoard / ``report_to`` get them).
* **Checkpoints** hold the masks (``sparsity_masks.safetensors``) and the schedule state
  (``sparse_trainer_state.json``); ``resume_from_checkpoint`` continues with the same masks and the same next
  pruning step.
* **Accelerate.** The same script runs on 1 or N processes: every process runs the pruning method (methods may
  share work across processes), rank 0's pruned weights are then broadcast, and the masks are checked identical
  on every process (a fingerprint all-reduce) after every pruning step.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, has_length

from ..configuration import PruningConfig, PruningConfigError, get_method
from ..data import CalibrationDataError, random_indices
from ..pruned import attach_pruning_state
from ..surgery.shapes import get_metadata
from ..utils import get_logger, progress
from .distillation import DistillationConfig, DistillationError, check_teacher, distillation_loss
from .masks import MASKS_NAME, MaskState, _select_layer_names
from .schedules import PruningSchedule, PruningScheduleError, cyclic_linear_factor

__all__ = ["SparseTrainer", "SPARSE_STATE_NAME"]

logger = get_logger(__name__)

SPARSE_STATE_NAME = "sparse_trainer_state.json"
_STATE_FORMAT = 1


def _as_list(value) -> list | None:
    if isinstance(value, str):
        return [value]
    return list(value) if value else None


class _Calibration:
    """Calibration batches for one pruning step, with a progress bar. Every pass draws a fresh random subset of
    ``num_samples`` rows (all rows, shuffled, when ``None``), seeded by ``seed`` and the pass number, so that every
    process sees the same batches and a method that makes several passes (CAP's gradients) sees new samples."""

    def __init__(self, dataset, *, num_samples: int | None, batch_size: int, collate_fn, num_workers: int, seed: int, desc: str, disable: bool):
        self.dataset, self.num_samples, self.batch_size = dataset, num_samples, batch_size
        self.collate_fn, self.num_workers, self.seed = collate_fn, num_workers, seed
        self.desc, self.disable = desc, disable
        self._passes = 0

    def __iter__(self):
        indices = random_indices(len(self.dataset), self.num_samples, self.seed + 7919 * self._passes)
        self._passes += 1
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, indices), batch_size=self.batch_size, shuffle=False,
            collate_fn=self.collate_fn, num_workers=self.num_workers,
        )
        yield from progress(loader, desc=self.desc, total=len(loader), disable=self.disable, unit="batch")


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
            ``PruningSchedule.one_shot()``: once, before the first optimizer step, at the config's sparsity. The
            sparsity of each pruning step replaces the config's sparsity field (``sparsity``; VBP's
            ``pruning_ratio``). Structured methods (which change shapes) only run one-shot at step 0.
        teacher_model: the dense model to distil from (same label space as the student); frozen, in eval mode,
            moved to the training device. Not wrapped for data parallelism: every process runs it on its own batch.
        distillation: the loss settings (:class:`~hf_sparsify.DistillationConfig`); default when a teacher is given.
        calibration_dataset: where pruning steps draw calibration samples (default: ``train_dataset``); it goes
            through the Trainer's data collator, so it has the training data's format.

    Example:

    ```python
    >>> trainer = SparseTrainer(model=model, args=args, train_dataset=train, data_collator=collate,
    ...                         pruning_config=hf_sparsify.MagnitudeConfig(sparsity=0.7), teacher_model=dense)
    >>> trainer.train()
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
        self._pruner = None
        self._points: list[tuple[int, float | None]] | None = None
        self._steps_per_epoch: int | None = None
        self._resume_dir: str | None = None
        self._loss_parts: dict[str, torch.Tensor] = {}
        self._loss_counts = 0
        self._calibration_source = None

        super().__init__(*args, **kwargs)

        if self.model_init is not None:
            raise ValueError("SparseTrainer needs model=, not model_init= (re-initialising the model would lose its masks).")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "SparseTrainer keeps masks on whole (unsharded) weights: DeepSpeed and FSDP are not supported. Use "
                "data parallelism (accelerate launch / torchrun without --fsdp or --deepspeed)."
            )
        model = self.model
        self._has_distillation_head = hasattr(model, "distillation_classifier") and hasattr(model, "cls_classifier")
        if self._has_distillation_head and not self.label_names:
            self.label_names = ["labels"]  # DeiT's teacher head takes no labels, but the batches carry them
        if self.teacher_model is not None:
            check_teacher(model, self.teacher_model)
            self.teacher_model.eval().requires_grad_(False)
            self.teacher_model.to(self.args.device)
        if self.teacher_model is not None or self._has_distillation_head:
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
    def _config_at(self, sparsity: float | None) -> PruningConfig:
        if sparsity is None:
            return self.pruning_config
        return self.pruning_config.with_target(sparsity)

    def _check_pruning_setup(self) -> None:
        config = self.pruning_config
        self._pruner = get_method(config.method).pruner_class(config)
        final = config.target
        self.schedule.check_final_sparsity(final)
        if not config.target_interpolable and any(v is not None and v != final for _, v in self.schedule.points(final)):
            raise PruningScheduleError(
                f"{config.method}'s target {config.target_field}={final!r} cannot be ramped by a schedule (it is not a "
                "sparsity): use PruningSchedule.one_shot(), or a schedule whose every step prunes to the final target."
            )
        for _, sparsity in self.schedule.points(final):
            self._config_at(sparsity)  # the config validates itself: N:M vs sparsity, ranges
        if self._pruner.changes_shapes:
            if self.schedule.times() != [0]:
                raise PruningScheduleError(
                    f"{config.method} removes structures (the model's shapes change), which cannot happen between "
                    "optimizer steps: use schedule=PruningSchedule.one_shot() (prune before the first step), or prune "
                    "with hf_sparsify.prune(...) first and give SparseTrainer the pruned model."
                )
            if self.optimizer is not None:
                raise ValueError(
                    f"{config.method} changes the model's shapes before training, so the optimizer must be created "
                    "afterwards: do not pass optimizers=(...)."
                )
        if self._pruner.needs_calibration_data:
            dataset = self.calibration_dataset if self.calibration_dataset is not None else self.train_dataset
            if dataset is None:
                raise CalibrationDataError(
                    f"{config.method} reads calibration data at each pruning step: pass train_dataset= or calibration_dataset=."
                )
            if not has_length(dataset) or isinstance(dataset, torch.utils.data.IterableDataset):
                raise CalibrationDataError(
                    f"{config.method} draws random calibration samples, which needs a dataset with a length: pass "
                    "calibration_dataset= (a map-style dataset in the training data's format)."
                )
            if len(dataset) == 0:
                raise CalibrationDataError("the calibration data (train_dataset) is empty.")
            # gradient methods (CAP, WoodFisher, FastCAP) check labels only when they run; ask their loss here
            if config.needs_labels():
                batch = self._collate(self._calibration_dataset(), [0])
                if "labels" not in batch:
                    source = "calibration_dataset" if self.calibration_dataset is not None else "train_dataset"
                    raise CalibrationDataError(
                        f"{config.method} needs a loss at each pruning step, so its calibration batches need 'labels', but "
                        f"the batches of {source} (after the data collator) have only {sorted(batch)}. Pass a labelled "
                        "calibration_dataset=, or use a method that needs no labels (e.g. magnitude)."
                    )

    # ------------------------------------------------------------------------------------------ calibration
    def _calibration_dataset(self):
        if self._calibration_source is None:
            dataset = self.calibration_dataset if self.calibration_dataset is not None else self.train_dataset
            try:
                import datasets

                if isinstance(dataset, datasets.Dataset):
                    dataset = self._remove_unused_columns(dataset, description="calibration")
            except ImportError:  # pragma: no cover
                pass
            self._calibration_source = dataset
        return self._calibration_source

    def _collator(self):
        try:
            import datasets

            if isinstance(self._calibration_dataset(), datasets.Dataset):
                return self.data_collator
        except ImportError:  # pragma: no cover
            pass
        return self._get_collator_with_removed_columns(self.data_collator, description="calibration")

    def _collate(self, dataset, indices: list[int]) -> dict[str, Any]:
        return dict(self._collator()([dataset[i] for i in indices]))

    def _calibration(self, index: int, config: PruningConfig, desc: str) -> _Calibration:
        """Fresh calibration batches for pruning step ``index``: random rows of the training data (the method's
        ``num_calibration_samples``, or all rows in a random order), the same on every process (seeded by the
        run's seed and the step index). Batches have ``grad_batch_size`` (gradient methods) or
        ``calibration_batch_size`` images."""
        seed = (self.args.data_seed if self.args.data_seed is not None else self.args.seed) + 10_007 * (index + 1)
        return _Calibration(
            self._calibration_dataset(),
            num_samples=config.calibration_images(),
            batch_size=config.effective_batch_size,
            collate_fn=self._collator(),
            num_workers=self.args.dataloader_num_workers,
            seed=seed,
            desc=desc,
            disable=self._disable_bars(),
        )

    def _disable_bars(self) -> bool:
        return bool(self.args.disable_tqdm) or not self.is_local_process_zero()

    # ------------------------------------------------------------------------------------------ schedule
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._steps_per_epoch = values[1] if has_length(dataloader) else None
        return values

    def _resolve_points(self, max_steps: int) -> list[tuple[int, float | None]]:
        if self.pruning_config is None:
            return []
        final = self.pruning_config.target
        points = self.schedule.resolve(self._steps_per_epoch, final)
        late = [step for step, _ in points if step >= max_steps]
        if late:
            raise PruningScheduleError(
                f"the schedule prunes at optimizer step {late[0]}, but training ends after {max_steps} steps "
                f"({self._steps_per_epoch} steps per epoch): end the schedule earlier or train longer (a pruning step "
                "needs recovery steps after it)."
            )
        return points

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.schedule is None or not self.schedule.cyclic_lr or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer if optimizer is not None else self.optimizer
        peak = self.args.learning_rate
        if self.schedule.min_learning_rate > peak:
            raise PruningScheduleError(
                f"min_learning_rate={self.schedule.min_learning_rate} is above learning_rate={peak}: each cycle decays from "
                "learning_rate down to min_learning_rate."
            )
        if self.args.get_warmup_steps(num_training_steps) > 0:
            logger.warning("SparseTrainer: warmup is ignored with the cyclic linear learning rate (cyclic_lr=True).")
        boundaries = [step for step, _ in self._resolve_points(num_training_steps)]
        min_ratio = self.schedule.min_learning_rate / peak if peak > 0 else 0.0

        def factor(step: int) -> float:
            return cyclic_linear_factor(step, boundaries, num_training_steps, min_ratio)

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
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
        if self._pruner is not None and self._pruner.changes_shapes:
            if self._resume_dir is not None:
                self._reload_structured(self._resume_dir)
            elif not self.pruning_history:
                self._points = [(0, self.schedule.points(self.pruning_config.target)[0][1])]
                self._prune_step(0)  # before the optimizer exists: shapes change
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _reload_structured(self, checkpoint: str) -> None:
        """Resuming after a structured one-shot step: rebuild the model with the checkpoint's shapes."""
        from ..modeling import AutoSparseModelForImageClassification

        state = self._read_state(checkpoint)
        if state is None or not state.get("completed"):
            return
        model = AutoSparseModelForImageClassification.from_pretrained(checkpoint)
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
        self._check_masks_identical()
        self._loss_parts, self._loss_counts = {}, 0

    def _on_train_end(self) -> None:
        if self.masks is not None:
            self.masks.detach_gradient_hooks()
        if getattr(self.model, "config", None) is None:
            return
        record = self._training_record()
        get_metadata(self.model.config)["recovery"] = record
        # shown by the model card that save_model() / push_to_hub() write (hf_sparsify.hub.card)
        card = {"trainer": "SparseTrainer", "optimizer steps": record["global_step"], "epochs": record["epochs"]}
        if self.pruning_history:
            card["pruning steps"] = ", ".join(
                f"step {r['step']}" + (f" → {r['sparsity']:.1%}" if isinstance(r.get("sparsity"), float) else "") for r in self.pruning_history
            )
        if self.schedule is not None:
            card["schedule"] = self.schedule.describe()
        if self.distillation is not None:
            card["distillation from the dense model"] = self.distillation.describe()
        self.model.pruning_training = card

    def _training_record(self) -> dict[str, Any]:
        return {
            "trainer": "SparseTrainer",
            "global_step": self.state.global_step,
            "epochs": round(float(self.state.epoch or 0.0), 4),
            "pruning_steps": [{"step": r["step"], "sparsity": r.get("sparsity")} for r in self.pruning_history],
            "schedule": self.schedule.to_dict() if self.schedule is not None else None,
            "distillation": self.distillation.to_dict() if self.distillation is not None else None,
        }

    def _maybe_prune(self) -> None:
        if not self._points:
            return
        done = len(self.pruning_history)
        due = [i for i in range(done, len(self._points)) if self._points[i][0] <= self.state.global_step]
        if due:
            self._prune_step(due[-1])  # a resumed run that skipped points jumps to the latest target

    # ------------------------------------------------------------------------------------------ pruning
    def _prune_step(self, index: int) -> None:
        from ..api import prune

        step, sparsity = self._points[index]
        config = self._config_at(sparsity)
        target = config.target
        total = len(self._points)
        desc = f"pruning step {index + 1}/{total} ({config.method}" + (f" → {target:.1%})" if isinstance(target, float) else ")")
        calibration = self._calibration(index, config, desc + ": calibration") if self._pruner.needs_calibration_data else None
        model = self.model
        started = time.perf_counter()
        logger.info(f"SparseTrainer: {desc} at optimizer step {self.state.global_step}.")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # pruning must not change the training's random stream
            torch.manual_seed(config.seed + index)
            prune(model, config, calibration, inplace=True, disable_tqdm=self._disable_bars())
        model.zero_grad(set_to_none=True)
        self._broadcast_from_main(model)
        if not self._pruner.changes_shapes:
            self.masks.update_from_weights(_select_layer_names(model, config))
        else:
            self.masks = MaskState.from_weights(model, config=config)
        self._check_masks_identical()
        seconds = time.perf_counter() - started
        measured = self.masks.sparsity()
        record = {"step": self.state.global_step, "planned_step": step, "sparsity": target, "measured_sparsity": measured["global"], "seconds": round(seconds, 3)}
        self.pruning_history.append(record)
        logger.info(f"SparseTrainer: {desc} done in {seconds:.1f} s; measured sparsity {measured['global']:.2%}.")
        if not self._pruner.changes_shapes or self.state.global_step > 0:
            logs = {"sparsity": measured["global"], "pruning_steps": len(self.pruning_history), "pruning_time": seconds}
            if isinstance(target, float):
                logs["sparsity_target"] = target
            logs.update({f"sparsity/{name}": value for name, value in measured["layers"].items()})
            self.log(logs)

    def _broadcast_from_main(self, model: nn.Module) -> None:
        """Make every process hold rank 0's pruned weights (methods may differ across processes in float rounding
        or in the data they saw)."""
        if self.accelerator.num_processes <= 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)

    def _check_masks_identical(self) -> None:
        """Prove the masks equal on every process: all-reduce MIN and MAX of a per-layer fingerprint."""
        if self.accelerator.num_processes <= 1 or self.masks is None:
            return
        import torch.distributed as dist

        fp = self.masks.fingerprint().to(self.args.device)
        count = torch.tensor([float(fp.shape[0])], dtype=torch.float64, device=self.args.device)
        lo, hi = count.clone(), count.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        same = bool(lo.item() == hi.item())
        if same and fp.numel():
            lo, hi = fp.clone(), fp.clone()
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            same = torch.equal(lo, hi)
        if not same:
            raise RuntimeError(
                "SparseTrainer: the sparsity masks differ between processes. Every process must start from the same "
                "weights (load the same checkpoint, same seed)."
            )

    # ------------------------------------------------------------------------------------------ loss and logs
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher_model is None and not self._has_distillation_head:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        labels = inputs.get("labels")
        student_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**student_inputs)
        if model.training and self.teacher_model is not None:
            with torch.no_grad(), self.accelerator.autocast():
                teacher_logits = self.teacher_model(**student_inputs).logits
            loss, parts = distillation_loss(outputs, teacher_logits, labels, self.distillation, label_smoothing=self.args.label_smoothing_factor)
            for key, value in parts.items():
                self._loss_parts[key] = self._loss_parts.get(key, 0.0) + value
            self._loss_counts += 1
        else:
            if labels is None:
                raise ValueError("SparseTrainer needs 'labels' in the batches to compute a loss.")
            logits = outputs["cls_logits"] if (model.training and self._has_distillation_head) else outputs["logits"]
            loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs and self.state.global_step is not None and self.masks is not None and self.is_in_train:
            logs.update(self._training_log_entries())
        super().log(logs, start_time)

    def _training_log_entries(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._loss_counts:
            for key in sorted(self._loss_parts):
                value = torch.as_tensor(self._loss_parts[key], device=self.args.device, dtype=torch.float32) / self._loss_counts
                out[key] = float(self.accelerator.reduce(value, reduction="mean").item())
            self._loss_parts, self._loss_counts = {}, 0
        if len(self.masks):
            out["sparsity"] = self.masks.sparsity()["global"]
        if self.pruning_history:
            last = self.pruning_history[-1].get("sparsity")
            if isinstance(last, float):
                out["sparsity_target"] = last
            out["pruning_steps"] = len(self.pruning_history)
        return out

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        if self.args.should_save and self.masks is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            self.save_sparse_state(folder)
        super()._save_checkpoint(model, trial)

    def save_sparse_state(self, folder: str | os.PathLike) -> None:
        """Write the masks (``sparsity_masks.safetensors``) and the schedule state (``sparse_trainer_state.json``)."""
        folder = str(folder)
        self.masks.save(os.path.join(folder, MASKS_NAME))
        state = {
            "format": _STATE_FORMAT,
            "global_step": self.state.global_step,
            "points": [list(p) for p in (self._points or [])],
            "completed": self.pruning_history,
            "pruning_config": self.pruning_config.to_dict() if self.pruning_config is not None else None,
            "schedule": self.schedule.to_dict() if self.schedule is not None else None,
            "distillation": self.distillation.to_dict() if self.distillation is not None else None,
            "steps_per_epoch": self._steps_per_epoch,
        }
        with open(os.path.join(folder, SPARSE_STATE_NAME), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Load the checkpoint's weights through ``from_pretrained``, which converts transformers' saved key names.

        transformers 5.x saves ViT/DeiT/DINOv2 weights under their 4.x names (``vit.encoder.layer.N...``) while
        ``Trainer._load_from_checkpoint`` calls a non-strict ``load_state_dict``: the encoder weights would silently
        keep their pre-resume values. Here they load strictly, converted, and structured shapes are honoured.
        """
        from transformers import PreTrainedModel

        from ..modeling import AutoSparseModelForImageClassification
        from ..surgery.shapes import is_structured

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        config_file = os.path.join(resume_from_checkpoint, "config.json")
        if not isinstance(target, PreTrainedModel) or not os.path.isfile(config_file):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        config = type(target.config).from_pretrained(resume_from_checkpoint)
        if is_structured(config):
            loaded = AutoSparseModelForImageClassification.from_pretrained(resume_from_checkpoint)
        else:
            loaded = type(target).from_pretrained(resume_from_checkpoint, config=config)
        target.load_state_dict(loaded.state_dict(), strict=True)
        logger.info(f"SparseTrainer: loaded the weights of {resume_from_checkpoint} (strict, converted key names).")

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

    @staticmethod
    def _read_state(folder: str) -> dict[str, Any] | None:
        path = os.path.join(folder, SPARSE_STATE_NAME)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _restore_state(self, folder: str) -> bool:
        state = self._read_state(folder)
        masks_path = os.path.join(folder, MASKS_NAME)
        if state is None or not os.path.isfile(masks_path):
            logger.warning(f"SparseTrainer: {folder} holds no SparseTrainer state; masks are read off the weights' zeros.")
            return False
        saved = [tuple(p) for p in state.get("points") or []]
        planned = [tuple(p) for p in self._points or []]
        if saved != planned:
            raise PruningScheduleError(
                f"the checkpoint {folder} was written with pruning points {saved}, but this run plans {planned}: resume "
                "with the same pruning_config, schedule and training length."
            )
        self.pruning_history = list(state.get("completed") or [])
        self.masks = MaskState.load(self.model, masks_path)
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
        try:
            from ..hub.card import write_model_card
        except ImportError:
            return super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return None
        from transformers.modelcard import TrainingSummary

        training = dict(getattr(self.model, "pruning_training", None) or self._training_record())
        try:
            summary = TrainingSummary.from_trainer(self, **kwargs)
        except Exception as err:  # noqa: BLE001 - the card is documentation; never fail a push on it
            logger.warning(f"SparseTrainer: transformers' training summary is unavailable ({err}); the card omits it.")
            summary = None
        if summary is not None:
            training.update({k: v for k, v in (summary.hyperparameters or {}).items() if v is not None})
            if summary.eval_results:
                training["eval_results"] = summary.eval_results
        metadata = {"tags": _as_list(tags), "datasets": _as_list(dataset_tags), "license": license, "language": language, "model_name": model_name}
        metadata = {k: v for k, v in metadata.items() if v}
        write_model_card(self.args.output_dir, self.model, repo_id=self.hub_model_id, training=training, metadata=metadata or None)
        return None
