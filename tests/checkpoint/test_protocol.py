"""The checkpoint commit protocol: atomic commit, hash verification, fallback, pruning, state."""

from __future__ import annotations

import hashlib
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
    assert "step 200" in reports[0] and "shards/model.pt" in reports[0] and "xxh3_128" in reports[0]


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


# -- a run never destroys a checkpoint it did not write -------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_corrupt_marker_is_a_verification_problem_not_a_crash(tmp_path: Path) -> None:
    write_step(tmp_path, 100)
    newest = write_step(tmp_path, 200)
    (newest / ckpt.MARKER).write_text('{"step": 200}')  # no file list
    reports: list[str] = []
    point = ckpt.find_resume_point(tmp_path, report=reports.append)
    assert point is not None and point.step == 100
    assert "COMMITTED is corrupt" in reports[0] and "'files'" in reports[0]


def test_every_step_failing_verification_refuses_a_fresh_start(tmp_path: Path) -> None:
    """The issue's case: each step's trainer_state_rank0.pt truncated. Training from step 0
    would have trained over them and pruned older, intact files."""
    from pretrain.checkpoint.state import _pick_resume_point
    from tests.conftest import tiny_experiment

    config = tiny_experiment(tmp_path)
    root = Path(config.checkpoint.dir)
    for step in (2, 4):
        state = ckpt.trainer_state_path(write_step(root, step), 0)
        state.write_bytes(state.read_bytes()[:7])
    before = _tree(root)
    with pytest.raises(ckpt.CheckpointError) as caught:
        _pick_resume_point(config)
    message = str(caught.value)
    assert "\n" not in message
    assert "none of its committed steps (2, 4) passes verification" in message
    assert "step_0000004/trainer_state_rank0.pt: 7 bytes" in message
    assert "train.resume=never" in message
    assert _tree(root) == before
    # One usable step is enough: the run resumes there (the newer one is reported).
    write_step(root, 1)
    point = _pick_resume_point(config)
    assert point is not None and point.step == 1


def test_prune_never_removes_a_step_the_run_does_not_own(tmp_path: Path) -> None:
    for step in (100, 200, 300, 400):
        write_step(tmp_path, step)
    # This run resumed at 100 (its timeline: 100) and wrote 150 and 250; 200, 300 and 400
    # belong to another timeline (newer than its first save among them).
    for step in (150, 250):
        write_step(tmp_path, step)
    removed = ckpt.prune(tmp_path, keep_last=1, own={100, 150, 250})
    assert {p.name for p in removed} == {"step_0000100", "step_0000150"}
    assert ckpt.committed_steps(tmp_path) == [200, 250, 300, 400]


def test_make_room_moves_another_runs_step_aside(tmp_path: Path) -> None:
    theirs = write_step(tmp_path, 100)
    before = _tree(theirs)
    moved = ckpt.make_room(tmp_path, 100, own={50})
    assert moved is not None and moved.name == "step_0000100.superseded"
    assert _tree(moved) == before and not theirs.exists()
    assert ckpt.committed_steps(tmp_path) == []  # out of every reader's sight
    write_step(tmp_path, 100)
    again = ckpt.make_room(tmp_path, 100, own=set())
    assert again is not None and again.name == "step_0000100.superseded.2"
    # A save that never committed, or the run's own step, is simply replaced.
    write_step(tmp_path, 200, commit=False)
    assert ckpt.make_room(tmp_path, 200, own=set()) is None
    write_step(tmp_path, 300)
    assert ckpt.make_room(tmp_path, 300, own={300}) is None
    assert not ckpt.step_dir(tmp_path, 200).exists() and not ckpt.step_dir(tmp_path, 300).exists()


def test_a_resumed_run_owns_only_its_timeline_up_to_the_step_it_resumed(tmp_path: Path) -> None:
    from pretrain.checkpoint.state import start_timeline
    from tests.conftest import tiny_experiment

    config = tiny_experiment(tmp_path)
    root = Path(config.checkpoint.dir)
    for step, name in [(4, "a"), (6, "b"), (8, "a"), (12, "a")]:
        directory = ckpt.step_dir(root, step)
        directory.mkdir(parents=True)
        (directory / "x").write_text("x")
        ckpt.commit(directory, step=step, world_size=1, extra={"timeline": name})
    point = ckpt.find_resume_point(root, step=8)
    assert point is not None
    timeline = start_timeline(config, point)
    assert timeline.id == "a" and timeline.own == {4, 8}
    # Steps written before timelines were recorded: those up to the resumed step are its own.
    legacy = tmp_path / "legacy"
    for step in (2, 4):
        write_step(legacy, step)
    config.checkpoint.dir = str(legacy)
    point = ckpt.find_resume_point(legacy)
    assert point is not None
    timeline = start_timeline(config, point)
    assert timeline.own == {2, 4} and len(timeline.id) == 32


def test_markers_written_with_sha256_still_verify(tmp_path: Path) -> None:
    """Steps committed before the digest became xxh3-128 record sha256; they stay resumable, and
    a changed byte in one is still caught."""
    directory = write_step(tmp_path, 4, commit=False)
    files = {
        str(p.relative_to(directory)): {
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "bytes": p.stat().st_size,
        }
        for p in directory.rglob("*")
        if p.is_file()
    }
    ckpt.commit(directory, step=4, world_size=2, files=files)
    assert ckpt.verify(directory) == []
    new = ckpt.hash_files(directory)
    assert all(set(entry) == {ckpt.DIGEST, "bytes"} for entry in new.values())
    model = directory / "shards" / "model.pt"
    data = bytearray(model.read_bytes())
    data[7] ^= 1
    model.write_bytes(bytes(data))
    assert ckpt.verify(directory) == [f"{model}: sha256 does not match the one recorded at commit"]
