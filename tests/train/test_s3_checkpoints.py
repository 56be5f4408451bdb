"""A training run whose data and checkpoint.dir are on S3 (moto's server on 127.0.0.1, real
s3fs, explicit credentials in data.storage_options and checkpoint.storage_options): a rank
SIGKILLed in the middle of uploading step 8 leaves step 4 the resume point; the resumed run ends
exactly where an uninterrupted local run does; evaluate and export read the URL.

2 processes over gloo, real DeepSpeed ZeRO-3 in bf16, real shards (as tests/train/test_resume.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint.reading import locate
from pretrain.checkpoint.remote import RemoteRoot, local_root
from pretrain.cli import main
from pretrain.pretrained import load_pretrained
from pretrain.tracking import read_run
from tests.helpers.distributed import run_cli_on_nodes
from tests.helpers.moto_server import make_bucket, moto_server, s3_options
from tests.helpers.trained_runs import experiment_file
from tests.train.conftest import Reference
from tests.train.runs import assert_same_weights, dump, rank0, train, weights

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install '.[s3]')")
pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install '.[dev]')")

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.s3]


def _s3_experiment(tmp_path: Path, manifest: Path, url: str, endpoint: str) -> Path:
    """The tiny experiment of tests/train/test_resume.py, its data and checkpoints on S3."""
    path = experiment_file(tmp_path, manifest)
    options = json.dumps(s3_options(endpoint))  # YAML reads JSON
    text = path.read_text().replace(
        f"  dir: {tmp_path / 'checkpoints'}\n",
        f"  dir: {url}\n  storage_options: {options}\n  local_dir: {tmp_path / 'staging'}\n",
    )
    text = text.replace(
        f"  manifest: {manifest}\n",
        f"  manifest: s3://data/char/manifest.json\n  storage_options: {options}\n",
    )
    path.write_text(text)
    return path


def test_s3_checkpoints_survive_a_kill_during_upload_and_resume_exactly(
    char_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: Reference
) -> None:
    reference_losses, reference_weights = reference.losses, reference.weights

    with moto_server(tmp_path) as endpoint:
        make_bucket(endpoint, "ckpt")
        make_bucket(endpoint, "data")
        url = "s3://ckpt/runs/tiny"
        options = s3_options(endpoint)
        store = RemoteRoot(url, options)
        store.fs.put(f"{char_manifest.parent}/", "data/char/", recursive=True)
        config = _s3_experiment(tmp_path, char_manifest, url, endpoint)

        # Rank 1 is SIGKILLed after uploading its first file of step 8: step 8 stays uncommitted.
        crashed = train(tmp_path, config, env={"MNEMOS_FAULTS": "die_in_upload@8:1"}, check=False)
        assert crashed.returncode != 0, dump(crashed)
        assert store.steps() == [4, 8] and store.committed_steps() == [4]
        assert store.fs.cat_file(f"{store.root}/latest") == b"step_0000004\n"
        marker = store.read_marker(4)
        assert "secret" not in store.fs.cat_file(store.step_key(4, ckpt.CONFIG_FILE)).decode()

        resumed = train(tmp_path, config)
        assert "resumed from step 4" in rank0(resumed), dump(resumed)
        assert store.committed_steps() == [4, 8]  # the partial upload replaced, then committed
        history = read_run(f"sqlite:///{tmp_path / 'mlflow.db'}", marker["run_id"])["history"]
        assert dict(history["train/loss"]) == reference_losses

        # Readers take the URL: the weights, the evaluation and the export are step 8's.
        point = locate(url, storage_options=options)
        assert point.step == 8
        assert_same_weights(weights(point.directory.parent, 8), reference_weights)
        options_file = tmp_path / "s3.json"
        options_file.write_text(json.dumps(options))
        capsys.readouterr()
        data_options = f"data.storage_options={json.dumps(options)}"  # never saved in a step
        args = ["--storage-options", str(options_file), "--json", "--no-mlflow", data_options]
        assert main(["evaluate", url, *args]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["step"] == 8 and report["checkpoint"] == str(point.directory)
        out = tmp_path / "export"
        export_args = ["--storage-options", str(options_file), data_options]
        assert main(["export", url, str(out), *export_args]) == 0
        exported = load_pretrained(out).model.state_dict()
        assert exported.keys() & reference_weights.keys()
        assert_same_weights(
            {k: v for k, v in exported.items() if k in reference_weights},
            {k: v for k, v in reference_weights.items() if k in exported},
        )


def _can_give_a_node_its_own_disk(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    return (
        shutil.which("unshare") is not None
        and subprocess.run(
            [*_own_disk(probe), "true"], capture_output=True, timeout=30, check=False
        ).returncode
        == 0
    )


def _own_disk(path: Path) -> list[str]:
    """A command prefix that runs the rest in a private mount namespace with an empty tmpfs on
    ``path``: what that process writes there is invisible to every other, as on a node's own
    local disk."""
    mount = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(path)]


def test_a_second_node_downloads_the_step_to_its_own_disk(
    char_manifest: Path, tmp_path: Path, reference: Reference
) -> None:
    """Two nodes of one process each (two torchrun agents, static rendezvous on 127.0.0.1),
    node 1's checkpoint.local_dir on a disk only it sees: node 1 stages and uploads its own
    shards, and after a crash its first rank downloads and verifies the resume step itself
    (rank 0's copy is not on its disk); the resumed run ends where the uninterrupted one does."""
    if not _can_give_a_node_its_own_disk(tmp_path):
        pytest.skip("a node's own disk is made with `unshare --mount` and tmpfs, which need root")
    with moto_server(tmp_path) as endpoint:
        make_bucket(endpoint, "ckpt")
        make_bucket(endpoint, "data")
        url = "s3://ckpt/runs/tiny"
        store = RemoteRoot(url, s3_options(endpoint))
        store.fs.put(f"{char_manifest.parent}/", "data/char/", recursive=True)
        config = _s3_experiment(tmp_path, char_manifest, url, endpoint)
        (tmp_path / "staging").mkdir()
        node1 = {1: _own_disk(tmp_path / "staging")}
        train_args = ["pretrain.cli", "train", str(config)]

        # Rank 1 (node 1) dies after uploading its first file of step 8; node 0 then fails too.
        crash = {"MNEMOS_FAULTS": "die_in_upload@8:1"}
        crashed = run_cli_on_nodes(train_args, workdir=tmp_path / "jobs", wrap=node1, env=crash)
        assert all(node.returncode != 0 for node in crashed), crashed[1].describe()
        assert store.committed_steps() == [4]
        # Node 1's shards of step 4 are on S3 but not on the disk node 0 sees.
        step4 = ckpt.step_dir(local_root(url, str(tmp_path / "staging")), 4)
        assert list(step4.glob("*rank_0_*")) and not list(step4.glob("*rank_1_*"))
        assert any("rank_1_" in key for key in store.fs.ls(store.step_key(4)))

        resumed = run_cli_on_nodes(train_args, workdir=tmp_path / "jobs", wrap=node1)
        for node in resumed:
            assert node.returncode == 0, node.describe()
        assert "resumed from step 4" in resumed[0].ranks[0].output, resumed[0].describe()
        assert store.committed_steps() == [4, 8]
        run = read_run(f"sqlite:///{tmp_path / 'mlflow.db'}", store.read_marker(4)["run_id"])
        assert dict(run["history"]["train/loss"]) == reference.losses
        point = locate(url, storage_options=s3_options(endpoint))
        assert_same_weights(weights(point.directory.parent, 8), reference.weights)
