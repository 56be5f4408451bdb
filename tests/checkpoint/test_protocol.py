"""The checkpoint commit protocol: atomic commit, hash verification, fallback, pruning, state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.checkpoint import layout as ckpt


def write_step(root: Path, step: int, *, commit: bool = True, world_size: int = 2) -> Path:
    directory = ckpt.step_dir(root, step)
    (directory / "shards").mkdir(parents=True)
    (directory / "shards" / "model.pt").write_bytes(bytes(range(256)) * (step + 1))
    for rank in range(world_size):
        ckpt.save_trainer_state(
            ckpt.trainer_state_path(directory, rank), {"step": step, "rank": rank}
        )
    if commit:
        ckpt.commit(directory, step=step, world_size=world_size, extra={"run_id": "abc"})
    return directory


def test_commit_records_every_file_and_points_latest(tmp_path: Path) -> None:
    directory = write_step(tmp_path, 100)
    marker = ckpt.read_marker(directory)
    assert marker["step"] == 100 and marker["world_size"] == 2 and marker["run_id"] == "abc"
    assert set(marker["files"]) == {
        "shards/model.pt",
        "trainer_state_rank0.pt",
        "trainer_state_rank1.pt",
    }
    assert (tmp_path / "latest").read_text().strip() == "step_0000100"
    assert ckpt.verify(directory) == []


def test_each_rank_hashes_only_its_own_files_and_together_they_cover_the_step(
    tmp_path: Path,
) -> None:
    directory = write_step(tmp_path, 7, commit=False)
    for rank in range(2):  # the names DeepSpeed gives each rank's ZeRO partitions
        (directory / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"m%d" % rank)
        (directory / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"o")
    parts = [ckpt.hash_files(directory, rank=rank) for rank in range(2)]
    assert set(parts[1]) == {
        "trainer_state_rank1.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert "shards/model.pt" in parts[0]  # a file no rank's name claims is rank 0's
    assert not set(parts[0]) & set(parts[1])
    gathered = {**parts[0], **parts[1]}
    assert gathered == ckpt.hash_files(directory)
    ckpt.commit(directory, step=7, world_size=2, files=gathered)
    assert ckpt.verify(directory) == []


def test_uncommitted_step_is_never_resumed(tmp_path: Path) -> None:
    write_step(tmp_path, 100)
    write_step(tmp_path, 200, commit=False)  # as if killed mid-save
    point = ckpt.find_resume_point(tmp_path)
    assert point is not None and point.step == 100
    with pytest.raises(ckpt.CheckpointError, match="not committed"):
        ckpt.read_marker(ckpt.step_dir(tmp_path, 200))


def test_flipped_byte_is_reported_and_previous_step_used(tmp_path: Path) -> None:
    write_step(tmp_path, 100)
    newest = write_step(tmp_path, 200)
    target = newest / "shards" / "model.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    reports: list[str] = []
    point = ckpt.find_resume_point(tmp_path, report=reports.append)
    assert point is not None and point.step == 100
    assert len(reports) == 1
    assert "step 200" in reports[0] and "shards/model.pt" in reports[0] and "sha256" in reports[0]


def test_missing_and_truncated_files_are_named(tmp_path: Path) -> None:
    directory = write_step(tmp_path, 100)
    (directory / "trainer_state_rank1.pt").unlink()
    model = directory / "shards" / "model.pt"
    model.write_bytes(model.read_bytes()[:10])
    problems = ckpt.verify(directory)
    assert any("trainer_state_rank1.pt: missing" in p for p in problems)
    assert any("model.pt: 10 bytes" in p for p in problems)


def test_explicit_step_errors(tmp_path: Path) -> None:
    write_step(tmp_path, 100)
    with pytest.raises(ckpt.CheckpointError, match=r"no step 300 \(committed steps: 100\)"):
        ckpt.find_resume_point(tmp_path, step=300)
    write_step(tmp_path, 200, commit=False)
    with pytest.raises(ckpt.CheckpointError, match="not committed"):
        ckpt.find_resume_point(tmp_path, step=200)


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert ckpt.find_resume_point(tmp_path / "absent") is None


def test_prune_keeps_newest_committed_and_drops_unfinished(tmp_path: Path) -> None:
    for step in (100, 200, 300):
        write_step(tmp_path, step)
    write_step(tmp_path, 250, commit=False)
    removed = ckpt.prune(tmp_path, keep_last=2)
    assert {p.name for p in removed} == {"step_0000100", "step_0000250"}
    assert ckpt.committed_steps(tmp_path) == [200, 300]


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "state.pt"
    ckpt.save_trainer_state(path, {"rng": ckpt.capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng_state(ckpt.load_trainer_state(path)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[0] == again[0] and expected[1] == again[1]
    assert torch.equal(expected[2], again[2])


def test_trainer_state_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"obj": object()}, path)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        ckpt.load_trainer_state(path)
