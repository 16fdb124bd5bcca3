"""Pruning schedules: ramps, CAP's segment recipe, conversion to optimizer steps, cyclic LR, and bad input."""

import pytest

from hf_sparsify import PruningSchedule, PruningScheduleError
from hf_sparsify.trainer import cyclic_linear_factor


def test_one_shot_is_a_single_point_at_the_config_sparsity():
    schedule = PruningSchedule.one_shot()
    assert schedule.points() == [(0, None)]
    assert schedule.points(final=0.7) == [(0, 0.7)]
    assert PruningSchedule.one_shot(at=40, sparsity=0.5).points() == [(40, 0.5)]


def test_linear_ramp_hits_every_target():
    points = PruningSchedule.gradual(initial_sparsity=0.3, final_sparsity=0.7, end=300, every=100, ramp="linear").points()
    assert [t for t, _ in points] == [0, 100, 200, 300]
    assert [s for _, s in points] == pytest.approx([0.3, 0.3 + 0.4 / 3, 0.3 + 0.8 / 3, 0.7])


def test_cubic_ramp_matches_zhu_gupta():
    schedule = PruningSchedule.gradual(initial_sparsity=0.2, final_sparsity=0.8, start=10, end=50, every=10)
    expected = [0.8 + (0.2 - 0.8) * (1 - (t - 10) / 40) ** 3 for t in (10, 20, 30, 40, 50)]
    assert [s for _, s in schedule.points()] == pytest.approx(expected)
    # cubic prunes fast first: the first increment is the largest
    increments = [b - a for a, b in zip(expected, expected[1:])]
    assert increments == sorted(increments, reverse=True)


def test_final_sparsity_defaults_to_the_config():
    schedule = PruningSchedule.gradual(initial_sparsity=0.4, end=4, every=2, ramp="linear")
    assert schedule.points(final=0.8) == [(0, 0.4), (2, pytest.approx(0.6)), (4, 0.8)]


def test_end_is_always_a_pruning_point():
    schedule = PruningSchedule.gradual(initial_sparsity=0.1, final_sparsity=0.5, end=25, every=10, ramp="linear")
    assert [t for t, _ in schedule.points()] == [0, 10, 20, 25]


def test_cap_300_epoch_recipe():
    """methods.md 1.5: 0.5→0.6 over epochs 20–40, 0.6→0.75 over 40–100, 0.75→0.9 over 100–280, hold to 300,
    a CAP step every 20 epochs, linear inside each segment."""
    schedule = PruningSchedule.from_segments(
        [(20, 0.5), (40, 0.6), (100, 0.75), (280, 0.9), (300, 0.9)], every=20, unit="epochs", cyclic_lr=True, min_learning_rate=1e-5
    )
    points = schedule.points()
    assert [t for t, _ in points] == list(range(20, 281, 20))  # the hold adds no pruning step
    sparsity = dict(points)
    assert sparsity[20] == pytest.approx(0.5)
    assert sparsity[40] == pytest.approx(0.6)
    assert sparsity[60] == pytest.approx(0.65)
    assert sparsity[100] == pytest.approx(0.75)
    assert sparsity[160] == pytest.approx(0.80)
    assert sparsity[280] == pytest.approx(0.9)
    steps = schedule.resolve(steps_per_epoch=10)
    assert steps[0] == (200, pytest.approx(0.5)) and steps[-1] == (2800, pytest.approx(0.9))


def test_segments_at_knots_only():
    schedule = PruningSchedule.from_segments([(0, 0.3), (5, 0.5), (9, 0.7)])
    assert schedule.points() == [(0, 0.3), (5, 0.5), (9, 0.7)]


def test_epochs_resolve_to_optimizer_steps_and_collisions_are_refused():
    schedule = PruningSchedule.gradual(initial_sparsity=0.2, final_sparsity=0.6, start=0.5, end=2.5, every=1, unit="epochs", ramp="linear")
    assert [s for s, _ in schedule.resolve(steps_per_epoch=8)] == [4, 12, 20]
    fine = PruningSchedule.gradual(initial_sparsity=0.2, final_sparsity=0.6, end=1, every=0.1, unit="epochs", ramp="linear")
    with pytest.raises(PruningScheduleError, match="same optimizer step"):
        fine.resolve(steps_per_epoch=5)
    with pytest.raises(PruningScheduleError, match="length"):
        schedule.resolve(steps_per_epoch=None)


def test_round_trip_through_a_dict():
    schedule = PruningSchedule.from_segments([(0, 0.3), (10, 0.6)], every=5, cyclic_lr=True, min_learning_rate=1e-6)
    again = PruningSchedule.from_dict(schedule.to_dict())
    assert again == schedule and again.points() == schedule.points()


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PruningSchedule.gradual(initial_sparsity=0.7, final_sparsity=0.5, end=10, every=5), "goes backwards"),
        (lambda: PruningSchedule.from_segments([(0, 0.6), (10, 0.4)]), "goes backwards"),
        (lambda: PruningSchedule.gradual(initial_sparsity=0.5, final_sparsity=1.0, end=10, every=5), "outside \\[0, 1\\)"),
        (lambda: PruningSchedule.from_segments([(0, 0.5), (10, 1.2)]), "outside \\[0, 1\\)"),
        (lambda: PruningSchedule.one_shot(sparsity=-0.1), "outside \\[0, 1\\)"),
        (lambda: PruningSchedule.from_segments([(10, 0.3), (5, 0.5)]), "must increase"),
        (lambda: PruningSchedule.gradual(initial_sparsity=0.1, end=10, every=0), "positive"),
        (lambda: PruningSchedule.gradual(initial_sparsity=0.1, start=10, end=5, every=1), "before start"),
        (lambda: PruningSchedule.gradual(initial_sparsity=0.1, end=10, every=2.5), "whole number"),
        (lambda: PruningSchedule(ramp="exponential"), "not one of"),
        (lambda: PruningSchedule.one_shot(unit="minutes"), "not one of"),
    ],
)
def test_bad_schedules_are_refused_with_the_fix(build, message):
    with pytest.raises(PruningScheduleError, match=message):
        build()


def test_final_sparsity_from_the_config_below_initial_is_refused():
    schedule = PruningSchedule.gradual(initial_sparsity=0.6, end=10, every=5)
    with pytest.raises(PruningScheduleError, match="goes backwards"):
        schedule.check_final_sparsity(0.5)


def test_cyclic_linear_factor_restarts_at_every_pruning_step():
    factors = [cyclic_linear_factor(step, [0, 4, 8], 12, 0.1) for step in range(12)]
    assert factors[0] == factors[4] == factors[8] == 1.0
    assert factors[3] == factors[7] == factors[11] == pytest.approx(0.1)
    assert factors[1] > factors[2] > factors[3]
    # a first pruning step after 0: the warm segment before it is a cycle too
    assert cyclic_linear_factor(0, [5], 10, 0.0) == 1.0 and cyclic_linear_factor(5, [5], 10, 0.0) == 1.0
