"""Fast checks: every shipped profile renders, scripts say what they do, preflight messages,
and the memory planner against DeepSpeed's own ZeRO-3 estimator."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from data_pipeline.configuration import load_config
from launch import preflight
from launch.backends import render
from launch.cli import main as launch_main
from launch.cli import script_path
from launch.config import ClusterConfig
from launch.script import Job
from pretrain.cli import main as pretrain_main
from pretrain.config import ExperimentConfig
from pretrain.plan import GIB, model_states, param_counts, parse_size
from tests.conftest import REPO_ROOT, tiny_experiment

PROFILES = sorted((REPO_ROOT / "configs" / "cluster").glob("*.yaml"))
EXPERIMENT = REPO_ROOT / "configs" / "experiments" / "shakespeare_xl.yaml"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_renders_a_valid_bash_script(profile: Path, tmp_path: Path) -> None:
    cluster = load_config(ClusterConfig, profile, [])
    text = render(Job(cluster, str(EXPERIMENT), ["train.max_steps=10"], workdir=REPO_ROOT))
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, text
    assert f"{EXPERIMENT} train.max_steps=10" in text
    assert {
        "local": "--standalone",
        "torchrun": "--rdzv_backend=c10d",
        "deepspeed": "--hostfile=",
        "slurm": "#SBATCH --signal=B:USR1@",
    }[cluster.backend] in text


def test_dry_run_prints_the_script_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = str(REPO_ROOT / "configs" / "cluster" / "slurm_gpu.yaml")
    args = [profile, str(EXPERIMENT), "-c", f"output_dir={tmp_path}", "-c", "account=proj1"]
    assert launch_main([*args, "--nnodes", "4", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "#SBATCH --nodes=4" in text and "#SBATCH --account=proj1" in text
    assert "#SBATCH --gpus-per-node=8" in text and "#SBATCH --partition=gpu" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "scontrol show hostnames" in text
    assert not list(tmp_path.iterdir())  # nothing written, nothing submitted


def test_deepspeed_include_exclude_and_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    cluster = load_config(
        ClusterConfig,
        REPO_ROOT / "configs" / "cluster" / "deepspeed_hostfile.yaml",
        [f"hostfile={hostfile}", "include=node1@node2:0,1"],
    )
    text = render(Job(cluster, str(EXPERIMENT)))
    assert f"--hostfile={hostfile}" in text and "--include=node1@node2:0,1" in text
    assert "--launcher=pdsh" in text and "--no_local_rank" in text
    local = tmp_path / "local_hosts"
    local.write_text("localhost slots=2\n")
    cluster.hostfile = str(local)
    assert "--no_ssh_check" in render(Job(cluster, str(EXPERIMENT)))


def test_slurm_deepspeed_hostfile_comes_from_the_nodelist() -> None:
    cluster = load_config(
        ClusterConfig,
        REPO_ROOT / "configs" / "cluster" / "slurm_gpu.yaml",
        ["slurm_launcher=deepspeed"],
    )
    text = render(Job(cluster, str(EXPERIMENT)))
    assert "sed 's/$/ slots=8/' > \"$hostfile\"" in text
    assert '"--hostfile=$hostfile"' in text and '"--master_addr=$head"' in text


def test_profile_errors_name_the_key() -> None:
    with pytest.raises(SystemExit):
        raise SystemExit(launch_main([str(PROFILES[0]), str(EXPERIMENT), "-c", "nodes=2"]))
    assert launch_main([str(PROFILES[0]), str(EXPERIMENT), "-c", "nodes=2", "--dry-run"]) == 2


def test_preflight_names_each_problem(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    config = tiny_experiment(
        tmp_path, f"data.manifest={tmp_path}/missing.json", f"checkpoint.dir={blocked}/ckpt"
    )
    problems = preflight.node_checks(config)
    assert any("data manifest" in p and "missing.json" in p for p in problems), problems
    assert any("checkpoint.dir" in p and "not writable" in p for p in problems), problems
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = ClusterConfig(backend="torchrun", nnodes=2, node_rank=0, rdzv_port=port)
        assert any(f"port {port}" in p for p in preflight.cluster_checks(cluster))
    cluster = ClusterConfig(backend="torchrun", nnodes=2, rdzv_host="no-such-host.invalid")
    assert any("does not resolve" in p for p in preflight.cluster_checks(cluster))


def test_preflight_rejects_an_invalid_experiment(tmp_path: Path) -> None:
    with pytest.raises(preflight.PreflightError, match=r"train\.lr"):
        preflight.run(None, str(EXPERIMENT), ["train.lr=fast"])


def big_experiment(tmp_path: Path) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(
        f"model:\n  _base_: {REPO_ROOT / 'configs' / 'model' / 'decoder_13b.yaml'}\n"
        "train:\n  micro_batch_size: 4\n  seq_len: 2048\n"
    )
    return path


def test_plan_prints_every_stage_and_a_micro_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", str(big_experiment(tmp_path)), "--gpus", "8", "--gpu-memory", "80GB"]
    assert pretrain_main(args) == 0
    out = capsys.readouterr().out
    for row in ("0 none", "1 optimizer", "2 none", "3 none", "3 optimizer+param"):
        assert row in out
    assert "without activation checkpointing" in out and "suggested micro_batch_size" in out
    assert parse_size("80GB") == 80 * GIB and parse_size("141 GiB") == 141 * GIB


@pytest.mark.parametrize("offload", ["none", "optimizer", "optimizer+param"])
@pytest.mark.parametrize("gpus", [1, 8, 64])
def test_plan_stage3_matches_deepspeeds_estimator(offload: str, gpus: int, tmp_path: Path) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    config = load_config(ExperimentConfig, big_experiment(tmp_path), [])
    total, largest = param_counts(config.model)
    ours = model_states(total, largest, gpus, 3, offload, "bf16")
    _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
        total,
        largest,
        num_gpus_per_node=gpus,
        cpu_offload=offload != "none",
        cpu_offload_params="param" in offload,
    )
    assert ours.total == pytest.approx(gpu_bytes, rel=0.01)


def test_trainer_overrides_may_follow_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    profile = str(REPO_ROOT / "configs" / "cluster" / "torchrun.yaml")
    args = [profile, str(EXPERIMENT), "--nnodes", "3", "train.max_steps=70", "--dry-run"]
    assert launch_main(args) == 0
    text = capsys.readouterr().out
    assert "--nnodes=3" in text and f"{EXPERIMENT} train.max_steps=70" in text


def test_the_script_and_job_are_named_after_the_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two experiments on one profile never overwrite each other's launch script."""
    profile = str(REPO_ROOT / "configs" / "cluster" / "slurm_cpu.yaml")
    assert launch_main([profile, str(EXPERIMENT), "name=xl_a", "--dry-run"]) == 0
    assert "--job-name=xl_a" in capsys.readouterr().out
    job_a = Job(load_config(ClusterConfig, profile, ["job_name=xl_a"]), str(EXPERIMENT))
    job_b = Job(load_config(ClusterConfig, profile, ["job_name=xl_b"]), str(EXPERIMENT))
    assert script_path(job_a, None) != script_path(job_b, None)


def test_an_invalid_experiment_is_refused_before_a_script_is_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = str(REPO_ROOT / "configs" / "cluster" / "local_cpu.yaml")
    assert launch_main([profile, str(EXPERIMENT), "train.max_steps=7", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.max_steps=7" in err and "warmup_steps" in err
