"""hf_sparsify.trainer.pruning: the schedule asks the method's config (the contract) what it may set, and a target
that is not a sparsity (a speed-up) is never interpolated, logged or recorded as one."""

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

import hf_sparsify
from hf_sparsify import MagnitudeConfig, PruningConfig, PruningSchedule, PruningScheduleError, SparseTrainer
from hf_sparsify.methods import Pruner, PruningResult
from hf_sparsify.surgery import apply_masks, lowest_k_masks
from hf_sparsify.trainer.pruning import check_pruning_setup, config_at, describe_step, due_point, resolve_points
from tests.trainer.toy import ToyImages, tiny_vit, training_args


@dataclass(kw_only=True)
class SpeedupConfig(PruningConfig):
    """A throwaway method whose target is a speed-up (like SPDY's): a schedule may not ramp it."""

    target_field: ClassVar[str] = "speedup"
    target_interpolable: ClassVar[bool] = False

    speedup: float = field(default=2.0, metadata={"help": "the speed-up to reach (here: 1 / (1 - sparsity) of every layer)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.speedup >= 1:
            raise hf_sparsify.PruningConfigError(f"speedup must be ≥ 1, got {self.speedup}.")


class SpeedupPruner(Pruner):
    """Magnitude pruning of every layer to sparsity ``1 - 1 / speedup``."""

    config_class = SpeedupConfig

    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False):
        sparsity = 1 - 1 / self.config.speedup
        layers = adapter.select_layers(self.config.targets, self.config.ignore)
        for layer in layers:
            weight = layer.weight
            masks = lowest_k_masks([weight.detach().abs()], round(sparsity * weight.numel()))
            apply_masks([weight], masks)
        return PruningResult(method=self.config.method, layers={layer.name: {} for layer in layers})


@pytest.fixture
def speedup_method(register_test_method):
    register_test_method("test_speedup", SpeedupConfig, SpeedupPruner)
    return SpeedupConfig


def test_a_target_that_is_not_interpolable_cannot_be_ramped(speedup_method, tmp_path):
    config = SpeedupConfig(speedup=4.0)
    with pytest.raises(PruningScheduleError, match="speedup=4.0 cannot be ramped"):
        check_pruning_setup(config, PruningSchedule.gradual(initial_sparsity=0.3, end=4, every=2))
    with pytest.raises(PruningScheduleError, match="cannot be ramped"):  # a schedule's own value would replace it
        check_pruning_setup(config, PruningSchedule.one_shot(sparsity=0.5))
    with pytest.raises(PruningScheduleError, match="cannot be ramped"):
        SparseTrainer(
            model=tiny_vit(), args=training_args(tmp_path, max_steps=6), train_dataset=ToyImages(16), pruning_config=config,
            schedule=PruningSchedule.gradual(initial_sparsity=0.3, end=4, every=2),
        )
    # one-shot, or a later single step at the final target, is fine
    assert check_pruning_setup(config, PruningSchedule.one_shot(at=3)) is SpeedupPruner


def test_spdy_sparsity_levels_keep_shapes_so_they_may_prune_after_step_zero():
    from hf_sparsify.methods.spdy.unstructured import UnstructuredSPDYPruner

    levels = hf_sparsify.SPDYConfig(base_method="magnitude", cost="macs", target_speedup=2.0)
    assert check_pruning_setup(levels, PruningSchedule.one_shot(at=3)) is UnstructuredSPDYPruner
    with pytest.raises(PruningScheduleError, match="removes structures"):  # widths change shapes: step 0 only
        check_pruning_setup(hf_sparsify.SPDYConfig(cost="macs", target_speedup=2.0), PruningSchedule.one_shot(at=3))


def test_a_speedup_target_runs_one_shot_and_is_recorded_as_itself(speedup_method, tmp_path):
    model = tiny_vit()
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=4, logging_steps=2), train_dataset=ToyImages(32),
        pruning_config=SpeedupConfig(speedup=4.0), schedule=PruningSchedule.one_shot(at=1),
    )
    trainer.train()
    assert hf_sparsify.sparsity_report(model).sparsity == pytest.approx(0.75, abs=1e-3)
    (step,) = trainer.pruning_history
    assert step["step"] == 1 and step["sparsity"] is None and step["target"] == {"speedup": 4.0}
    logs = [h for h in trainer.state.log_history if "sparsity" in h]
    assert logs and all("sparsity_target" not in h for h in logs)  # a speed-up is not a sparsity target
    assert logs[-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert model.pruning_training["pruning steps"] == "step 1 → speedup=4.0"
    assert model.config.hf_sparsify["recovery"]["pruning_steps"] == [{"step": 1, "sparsity": None, "target": {"speedup": 4.0}}]


def test_schedule_points_and_steps_follow_the_config():
    config = MagnitudeConfig(sparsity=0.8)
    schedule = PruningSchedule.gradual(initial_sparsity=0.2, end=6, every=3, ramp="linear")
    assert resolve_points(config, schedule, steps_per_epoch=None, max_steps=10) == [(0, 0.2), (3, pytest.approx(0.5)), (6, 0.8)]
    with pytest.raises(PruningScheduleError, match="training ends after 6 steps"):
        resolve_points(config, schedule, steps_per_epoch=None, max_steps=6)
    assert config_at(config, 0.5).sparsity == 0.5 and config_at(config, None) is config
    assert describe_step(1, 3, config_at(config, 0.5)) == "pruning step 2/3 (magnitude → 50.0%)"
    points = [(0, 0.2), (3, 0.5), (6, 0.8)]
    assert due_point(points, 0, 0) == 0 and due_point(points, 1, 2) is None
    assert due_point(points, 1, 7) == 2  # a resumed run that skipped a point jumps to the latest target


def test_spdy_sparsity_levels_in_a_sparse_trainer_after_step_zero(tmp_path):
    model = tiny_vit()
    config = hf_sparsify.SPDYConfig(
        base_method="magnitude", cost="macs", target_speedup=1.5, num_levels=6, num_random_starts=2, search_steps=2, patience=1,
        num_calibration_samples=8, calibration_batch_size=4,
    )  # fmt: skip
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=4, logging_steps=2), train_dataset=ToyImages(32),
        pruning_config=config, schedule=PruningSchedule.one_shot(at=1),
    )  # fmt: skip
    trainer.train()
    (step,) = trainer.pruning_history
    assert step["step"] == 1 and step["target"] == {"target_speedup": 1.5}
    sparsity = hf_sparsify.sparsity_report(model).sparsity
    assert sparsity > 0.2 and step["measured_sparsity"] == pytest.approx(sparsity, abs=1e-3)  # the masks held during training
