"""The commit protocol on object storage (moto's S3 server on 127.0.0.1, real s3fs): what a
reader resumes from, what an interrupted upload leaves, what pruning may remove."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint.reading import locate
from pretrain.checkpoint.remote import RemoteRoot, is_url, split_url
from pretrain.faults import Faults
from tests.helpers.moto_server import make_bucket, moto_server, s3_options

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install '.[s3]')")
pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install '.[dev]')")

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        make_bucket(url, "ckpt")
        yield url


@pytest.fixture
def store(endpoint: str, tmp_path: Path) -> RemoteRoot:
    return RemoteRoot(f"s3://ckpt/{tmp_path.name}", s3_options(endpoint), str(tmp_path / "cache"))


def _save(store: RemoteRoot, tmp: Path, step: int, *, timeline: str, commit: bool = True) -> None:
    """What a 2-rank save does: every rank's files written locally, uploaded, then sealed."""
    directory = ckpt.step_dir(tmp / "staging", step)
    directory.mkdir(parents=True)
    for rank in range(2):
        (directory / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes([step, rank]) * 999)
    (directory / ckpt.CONFIG_FILE).write_text(f"step: {step}\n")
    files = ckpt.hash_files(directory)
    store.upload(directory, files, faults=Faults(), step=step, rank=0)
    if commit:
        fields = {"step": step, "world_size": 2, "timeline": timeline}
        store.commit(step, ckpt.marker_bytes(fields, files))


def test_url_forms() -> None:
    assert is_url("s3://bucket/run") and not is_url("/tmp/run") and not is_url("runs/x")
    assert split_url("s3://b/run/step_0000004/") == ("s3://b/run", 4)
    assert split_url("s3://b/run") == ("s3://b/run", None)


def test_resume_reads_the_newest_committed_step_never_an_unfinished_upload(
    store: RemoteRoot, tmp_path: Path
) -> None:
    _save(store, tmp_path, 4, timeline="a")
    _save(store, tmp_path, 8, timeline="a", commit=False)  # killed mid-upload
    assert store.steps() == [4, 8] and store.committed_steps() == [4]
    point = store.find_resume_point()
    assert point is not None and point.step == 4
    assert point.directory == ckpt.step_dir(store.local, 4)
    assert not ckpt.verify(point.directory)  # every file downloaded and matching its hash
    assert store.fs.cat_file(f"{store.root}/latest") == b"step_0000004\n"
    assert store.remove_unfinished() == [8] and store.steps() == [4]


def test_a_corrupt_object_is_reported_and_the_previous_step_used(
    store: RemoteRoot, tmp_path: Path
) -> None:
    _save(store, tmp_path, 4, timeline="a")
    _save(store, tmp_path, 8, timeline="a")
    victim = store.step_key(8, "zero_pp_rank_1_optim_states.pt")
    store.fs.pipe_file(victim, b"\x00" * 1998)  # same size, other bytes
    reports: list[str] = []
    point = store.find_resume_point(report=reports.append)
    assert point is not None and point.step == 4
    assert len(reports) == 1 and "step 8" in reports[0] and "xxh3_128" in reports[0]
    assert "zero_pp_rank_1_optim_states.pt" in reports[0] and store.url in reports[0]
    with pytest.raises(ckpt.CheckpointError, match="step 8 is corrupt"):
        store.find_resume_point(step=8)


def test_pruning_removes_only_the_runs_own_steps(store: RemoteRoot, tmp_path: Path) -> None:
    _save(store, tmp_path, 2, timeline="other")  # an earlier run's step in the same prefix
    for step in (4, 6, 8):
        _save(store, tmp_path, step, timeline="mine")
    assert store.timeline_steps("mine", upto=8) == {4, 6, 8}
    assert store.prune(keep_last=1, own={4, 6, 8}) == [4, 6]
    assert store.committed_steps() == [2, 8]


def test_a_foreign_step_in_the_way_is_moved_aside_not_deleted(
    store: RemoteRoot, tmp_path: Path
) -> None:
    _save(store, tmp_path, 4, timeline="other")
    assert store.make_room(4, own=set()) == "step_0000004.superseded"
    assert store.steps() == []
    assert store.fs.exists(f"{store.root}/step_0000004.superseded/{ckpt.MARKER}")
    _save(store, tmp_path / "again", 4, timeline="mine")
    assert store.make_room(4, own={4}) is None and store.steps() == []  # its own: replaced


def test_readers_locate_a_url_root_or_step(
    store: RemoteRoot, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the readers' default cache
    (tmp_path / "tmp").mkdir()
    _save(store, tmp_path, 4, timeline="a")
    _save(store, tmp_path, 8, timeline="a")
    options = s3_options(endpoint)
    assert locate(store.url, storage_options=options).step == 8
    assert locate(f"{store.url}/step_0000004", storage_options=options).step == 4
    with pytest.raises(ckpt.CheckpointError, match="no committed step 6"):
        locate(store.url, step=6, storage_options=options)
    with pytest.raises(ckpt.CheckpointError, match="holds no step_NNNNNNN"):
        locate(f"{store.url}-nothing", storage_options=options)
