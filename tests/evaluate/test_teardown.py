"""A finished rank's process group really ends: no gloo thread survives into interpreter
shutdown, where destroying one aborted a rank of `pretrain evaluate` after its report was out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.distributed import run_cli_distributed


@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads are listed from /proc")
def test_leaving_the_group_stops_the_gloo_threads(tmp_path: Path) -> None:
    run = run_cli_distributed(["tests.evaluate.teardown_probe"], workdir=tmp_path, timeout=240)
    for rank in run.ranks:
        found = re.search(r"gloo threads (\d+) -> (\d+)", rank.output)
        assert found, rank.output
        before, after = int(found[1]), int(found[2])
        assert before > 0, rank.output  # the probe saw the group's threads, so it sees them go
        assert after == 0, rank.output
