"""SparseTrainer end to end on tiny models: gradual schedules, data-driven pruning steps, resume, save/reload,
logging, structured one-shot, and the errors for bad input."""

import json
import os

import pytest
import torch
from transformers import TrainerCallback

import hf_sparsify
from hf_sparsify import CalibrationDataError, MagnitudeConfig, PruningConfigError, PruningSchedule, PruningScheduleError, SparseTrainer
from tests.trainer.toy import TaylorConfig, TaylorPruner, ToyImages, tiny_vit, training_args


class SparsityRecorder(TrainerCallback):
    """Measured global sparsity of the prunable layers after every optimizer step."""

    def __init__(self, model):
        self.model, self.after_step = model, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.after_step[state.global_step] = hf_sparsify.sparsity_report(self.model, compute_macs=False).sparsity


@pytest.fixture
def taylor(register_test_method):
    register_test_method("test_taylor", TaylorConfig, TaylorPruner)
    TaylorPruner.seen = []
    return TaylorPruner


def test_gradual_schedule_reaches_each_target_at_the_planned_step(tmp_path):
    model = tiny_vit()
    schedule = PruningSchedule.gradual(initial_sparsity=0.2, final_sparsity=0.8, start=2, end=11, every=3, ramp="linear")
    recorder = SparsityRecorder(model)
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=14, weight_decay=0.05), train_dataset=ToyImages(64),
        pruning_config=MagnitudeConfig(sparsity=0.5, sparsity_distribution="global"), schedule=schedule, callbacks=[recorder],
    )
    trainer.train()
    planned = [(2, 0.2), (5, 0.4), (8, 0.6), (11, 0.8)]
    assert [(r["step"], r["sparsity"]) for r in trainer.pruning_history] == [(s, pytest.approx(v)) for s, v in planned]
    for step in range(1, 15):
        # a pruning point p prunes before optimizer step p + 1
        expected = max([v for s, v in planned if s < step], default=0.0)
        assert recorder.after_step[step] == pytest.approx(expected, abs=1e-3), f"after step {step}"
    # the saved config carries the sparsity reached, with the method's other settings
    assert model.pruning_config.sparsity == pytest.approx(0.8) and model.pruning_config.sparsity_distribution == "global"


def test_epoch_schedule_and_cyclic_learning_rate(tmp_path):
    model = tiny_vit()
    schedule = PruningSchedule.gradual(
        initial_sparsity=0.3, final_sparsity=0.6, start=0, end=2, every=1, unit="epochs", ramp="linear", cyclic_lr=True, min_learning_rate=1e-4
    )
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, num_train_epochs=3, logging_steps=1, learning_rate=1e-2), train_dataset=ToyImages(64),
        pruning_config=MagnitudeConfig(sparsity=0.6), schedule=schedule,
    )
    trainer.train()
    assert [r["step"] for r in trainer.pruning_history] == [0, 8, 16]  # 64 samples / batch 8 = 8 steps per epoch
    lr = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    # Trainer logs the rate of the step just taken: step s + 1 used the factor of step s
    assert lr[1] == pytest.approx(1e-2) and lr[9] == pytest.approx(1e-2) and lr[17] == pytest.approx(1e-2)
    assert lr[8] == pytest.approx(1e-4) and lr[16] == pytest.approx(1e-4) and lr[24] == pytest.approx(1e-4)
    assert lr[2] < lr[1] and lr[5] < lr[4]


def test_logs_sparsity_schedule_and_teacher_loss_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, teacher = tiny_vit(seed=1), tiny_vit(seed=2)
    args = training_args(tmp_path, max_steps=10, logging_steps=5, report_to=["tensorboard"])
    trainer = SparseTrainer(
        model=model, args=args, train_dataset=ToyImages(64), pruning_config=MagnitudeConfig(sparsity=0.5),
        schedule=PruningSchedule.gradual(initial_sparsity=0.25, end=5, every=5, ramp="linear"), teacher_model=teacher,
    )
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"sparsity", "sparsity_target", "pruning_steps", "teacher_loss", "label_loss"} <= set(train_logs[-1])
    assert train_logs[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    pruning_logs = [h for h in trainer.state.log_history if "pruning_time" in h]
    assert len(pruning_logs) == 2 and "sparsity/vit.layers.0.mlp.fc1" in pruning_logs[-1]
    files = [os.path.join(root, f) for root, _, fs in os.walk(tmp_path) for f in fs if "tfevents" in f]
    tags = set()
    for f in files:
        acc = EventAccumulator(f)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/sparsity", "train/teacher_loss", "train/sparsity_target", "train/sparsity/vit.layers.1.mlp.fc2"} <= tags


def test_data_driven_method_gets_fresh_calibration_batches(tmp_path, taylor):
    model = tiny_vit()
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=8), train_dataset=ToyImages(64),
        pruning_config=TaylorConfig(sparsity=0.6, calibration_batch_size=8),
        schedule=PruningSchedule.gradual(initial_sparsity=0.3, end=6, every=3, ramp="linear"),
    )
    trainer.train()
    assert [s for s, _, _ in taylor.seen] == pytest.approx([0.3, 0.45, 0.6])
    assert all(n == 16 for _, n, _ in taylor.seen)  # the method's default number of samples
    assert len({c for _, _, c in taylor.seen}) == 3  # a different random subset at every pruning step
    assert hf_sparsify.sparsity_report(model).sparsity == pytest.approx(0.6, abs=1e-3)


def test_calibration_dataset_without_labels_is_refused_for_a_loss_based_method(tmp_path, taylor):
    with pytest.raises(CalibrationDataError, match="needs a loss.*labels"):
        SparseTrainer(
            model=tiny_vit(), args=training_args(tmp_path, max_steps=2), train_dataset=ToyImages(16, labels=False),
            pruning_config=TaylorConfig(sparsity=0.5),
        )
    # a labelled calibration_dataset fixes it
    trainer = SparseTrainer(
        model=tiny_vit(), args=training_args(tmp_path, max_steps=2), train_dataset=ToyImages(16, labels=False),
        pruning_config=TaylorConfig(sparsity=0.5), calibration_dataset=ToyImages(16, seed=3),
    )
    assert trainer.calibration_dataset is not None
    with pytest.raises(CalibrationDataError, match="train_dataset= or calibration_dataset="):
        SparseTrainer(model=tiny_vit(), args=training_args(tmp_path, max_steps=2), pruning_config=TaylorConfig(sparsity=0.5))


def test_bad_setups_are_refused(tmp_path):
    args = training_args(tmp_path, max_steps=6)
    with pytest.raises(PruningScheduleError, match="needs pruning_config"):
        SparseTrainer(model=tiny_vit(), args=args, train_dataset=ToyImages(16), schedule=PruningSchedule.one_shot())
    with pytest.raises(PruningConfigError, match="2:4"):  # N:M fixes the sparsity: a ramp cannot pass through 0.3
        SparseTrainer(
            model=tiny_vit(), args=args, train_dataset=ToyImages(16), pruning_config=MagnitudeConfig(sparsity=0.5, mask_structure="2:4"),
            schedule=PruningSchedule.gradual(initial_sparsity=0.3, end=4, every=2),
        )
    with pytest.raises(PruningScheduleError, match="goes backwards"):
        SparseTrainer(
            model=tiny_vit(), args=args, train_dataset=ToyImages(16), pruning_config=MagnitudeConfig(sparsity=0.2),
            schedule=PruningSchedule.gradual(initial_sparsity=0.4, end=4, every=2),
        )
    trainer = SparseTrainer(
        model=tiny_vit(), args=args, train_dataset=ToyImages(16), pruning_config=MagnitudeConfig(sparsity=0.5),
        schedule=PruningSchedule.gradual(initial_sparsity=0.2, end=6, every=3),
    )
    with pytest.raises(PruningScheduleError, match="training ends after 6 steps"):
        trainer.train()


@pytest.mark.parametrize("resume_at", [12])  # the pruning step at 12 is due right after resuming
def test_resume_gives_the_same_masks_and_schedule(tmp_path, resume_at):
    def make(output_dir):
        return SparseTrainer(
            model=tiny_vit(), args=training_args(output_dir, max_steps=16, save_strategy="steps", save_steps=6, weight_decay=0.05),
            train_dataset=ToyImages(64), teacher_model=tiny_vit(seed=5),
            pruning_config=MagnitudeConfig(sparsity=0.8), schedule=PruningSchedule.gradual(initial_sparsity=0.2, end=12, every=4, ramp="linear"),
        )

    full = make(tmp_path / "full")
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{resume_at}"
    state = json.loads((checkpoint / "sparse_trainer_state.json").read_text())
    assert [r["step"] for r in state["completed"]] == [s for s in (0, 4, 8, 12) if s < resume_at]
    assert (checkpoint / "sparsity_masks.safetensors").is_file()

    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert [r["step"] for r in resumed.pruning_history] == [0, 4, 8, 12]
    for name, mask in full.masks.masks.items():
        assert torch.equal(resumed.masks.masks[name], mask), name
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_save_model_reloads_with_the_pruning_config(tmp_path):
    model = tiny_vit()
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=4), train_dataset=ToyImages(32),
        pruning_config=MagnitudeConfig(sparsity=0.7), teacher_model=tiny_vit(seed=3),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert {"pruning_config.json", "sparsity_summary.json", "model.safetensors", "config.json"} <= set(os.listdir(tmp_path / "final"))
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "final")
    assert reloaded.pruning_config.sparsity == pytest.approx(0.7)
    assert hf_sparsify.sparsity_report(reloaded).sparsity == pytest.approx(0.7, abs=1e-3)
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    recovery = reloaded.config.hf_sparsify["recovery"]
    assert recovery["global_step"] == 4 and recovery["pruning_steps"][0]["sparsity"] == pytest.approx(0.7)
    assert recovery["distillation"]["temperature"] == 2.0


def test_structured_method_prunes_once_before_training_and_resumes(tmp_path):
    from hf_sparsify import VBPConfig

    model = tiny_vit()
    args = training_args(tmp_path / "run", max_steps=6, save_strategy="steps", save_steps=3)
    trainer = SparseTrainer(model=model, args=args, train_dataset=ToyImages(64), pruning_config=VBPConfig(pruning_ratio=0.5, round_to=1))
    trainer.train()
    widths = [layer.mlp.fc1.out_features for layer in trainer.model.vit.layers]
    assert all(w < 64 for w in widths)
    trainer.save_model(str(tmp_path / "final"))
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "final")
    assert [layer.mlp.fc1.out_features for layer in reloaded.vit.layers] == widths

    resumed = SparseTrainer(model=tiny_vit(), args=args, train_dataset=ToyImages(64), pruning_config=VBPConfig(pruning_ratio=0.5, round_to=1))
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert [layer.mlp.fc1.out_features for layer in resumed.model.vit.layers] == widths
    for a, b in zip(trainer.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    with pytest.raises(PruningScheduleError, match="removes structures"):
        SparseTrainer(
            model=tiny_vit(), args=args, train_dataset=ToyImages(64), pruning_config=VBPConfig(pruning_ratio=0.5),
            schedule=PruningSchedule.gradual(initial_sparsity=0.2, end=4, every=2),
        )


def test_cap_prunes_gradually_inside_the_trainer(tmp_path):
    from hf_sparsify.methods.cap import CAPConfig

    model = tiny_vit()
    config = CAPConfig(sparsity=0.6, fisher_block_size=16, num_grads=4, calibration_batch_size=8)
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=6), train_dataset=ToyImages(64), pruning_config=config,
        schedule=PruningSchedule.gradual(initial_sparsity=0.3, end=3, every=3, ramp="linear"),
    )
    trainer.train()
    assert [r["sparsity"] for r in trainer.pruning_history] == pytest.approx([0.3, 0.6])
    assert hf_sparsify.sparsity_report(model).sparsity == pytest.approx(0.6, abs=1e-3)
    assert model.pruning_config.method == "cap" and model.pruning_config.sparsity == pytest.approx(0.6)
    # CAP's loss needs labels: refused up front when the training data has none
    with pytest.raises(CalibrationDataError, match="labels"):
        SparseTrainer(model=tiny_vit(), args=training_args(tmp_path, max_steps=2), train_dataset=ToyImages(16, labels=False), pruning_config=config)


def test_load_best_model_at_end_loads_the_best_checkpoint_exactly(tmp_path):
    args = training_args(
        tmp_path, max_steps=9, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
        load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True,  # "best" = highest loss:
    )  # an early checkpoint, so loading it really changes the weights
    trainer = SparseTrainer(model=tiny_vit(), args=args, train_dataset=ToyImages(32), eval_dataset=ToyImages(16, seed=2),
                            pruning_config=MagnitudeConfig(sparsity=0.5))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-9")
    expected = type(trainer.model).from_pretrained(best)
    for (name, a), b in zip(expected.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), name
