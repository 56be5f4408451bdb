"""A training run whose data and checkpoint.dir are on S3 (moto's server on 127.0.0.1, real
s3fs, explicit credentials in data.storage_options and checkpoint.storage_options): a rank
SIGKILLed in the middle of uploading step 8 leaves step 4 the resume point; the resumed run ends
exactly where an uninterrupted local run does; evaluate and export read the URL.

2 processes over gloo, real DeepSpeed ZeRO-3 in bf16, real shards (as tests/train/test_resume.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint.reading import locate
from pretrain.checkpoint.remote import RemoteRoot
from pretrain.cli import main
from pretrain.pretrained import load_pretrained
from pretrain.tracking import read_run
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
