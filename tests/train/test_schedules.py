"""Learning-rate schedules: shapes, end points, and purity (same value whatever came before)."""

from __future__ import annotations

import itertools

import pytest

from data_pipeline.configuration import from_dict
from pretrain.config import TrainConfig
from pretrain.train.schedules import learning_rate


def config(schedule: str, **kw: object) -> TrainConfig:
    base = {"lr": 1e-3, "min_lr": 1e-4, "max_steps": 100, "warmup_steps": 10, "schedule": schedule}
    return from_dict(TrainConfig, {**base, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear_up_to_lr(schedule: str) -> None:
    cfg = config(schedule)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(4, cfg) == pytest.approx(5e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)


def test_cosine_ends_at_min_lr_and_is_halfway_at_midpoint() -> None:
    cfg = config("cosine")
    assert learning_rate(55, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    values = [learning_rate(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_decays_in_equal_steps() -> None:
    cfg = config("linear")
    diffs = {round(learning_rate(s, cfg) - learning_rate(s + 1, cfg), 12) for s in range(10, 100)}
    assert len(diffs) == 1
    assert learning_rate(100, cfg) == pytest.approx(1e-4)


def test_constant_stays() -> None:
    assert learning_rate(99, config("constant")) == pytest.approx(1e-3)


def test_wsd_is_stable_then_decays_over_decay_steps() -> None:
    cfg = config("wsd", decay_steps=20)
    assert learning_rate(79, cfg) == pytest.approx(1e-3)
    assert learning_rate(90, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    # Default decay: the last 20% of max_steps.
    assert learning_rate(79, config("wsd")) == pytest.approx(1e-3)
    assert learning_rate(81, config("wsd")) < 1e-3


def test_schedule_is_pure() -> None:
    cfg = config("cosine")
    forward = [learning_rate(s, cfg) for s in range(100)]
    backward = [learning_rate(s, cfg) for s in reversed(range(100))][::-1]
    assert forward == backward


def test_negative_step_is_an_error() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        learning_rate(-1, config("cosine"))
