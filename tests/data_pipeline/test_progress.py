"""Progress lines: the time left, and log lines (not a bar) where no terminal is attached."""

from __future__ import annotations

import logging

import pytest

from data_pipeline.progress import eta, track


@pytest.mark.parametrize(
    ("elapsed", "done", "total", "expected"),
    [(10.0, 1, 4, "30s"), (60.0, 1, 3, "2m00s"), (3600.0, 1, 3, "2h00m"), (5.0, 0, 3, "?")],
)
def test_eta_is_the_pace_so_far_times_the_work_left(
    elapsed: float, done: int, total: int, expected: str
) -> None:
    assert eta(elapsed, done, total) == expected


def test_track_logs_lines_with_an_eta_without_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="data_pipeline.progress"):
        assert list(track(range(5), 5, "evaluate", every_s=0.0, unit="batch")) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and lines[0].startswith("[evaluate] 1/5 batch")
    assert all(" | ETA " in line for line in lines)


def test_track_is_silent_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="data_pipeline.progress"):
        assert list(track(iter("abc"), 3, "x", every_s=0.0, enabled=False)) == ["a", "b", "c"]
    assert caplog.records == []
