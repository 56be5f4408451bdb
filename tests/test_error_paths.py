"""Every CLI's error paths, as a user meets them: each bad input ends with its exit code and one
``error:`` line on stderr naming what is wrong (the file, key, step or shard), never a Python
traceback, and nothing the command was given is changed.

All cases fail early, before any training step and before a DeepSpeed engine is built; they
run as parallel subprocesses (about a minute and a half of CPU time in all, most of it imports).
A new subcommand or a new kind of bad input belongs here; docs/bad_input.md is the policy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from tests.conftest import REPO_ROOT
from tests.helpers.distributed import distributed_env
from tests.helpers.tiny_models import committed_checkpoint, tiny_export, tiny_tokenizer
from tests.helpers.trained_runs import experiment_file


@dataclass(frozen=True)
class Case:
    name: str
    command: str  # as a user types it; {placeholders} name the fixture's paths (no spaces)
    code: int  # the exit code
    says: str  # a part of the error line (file, key, step or shard, and what is wrong)


CASES = [
    # -- data-pipeline -------------------------------------------------------------------------
    Case("dp-missing-config", "data-pipeline prepare {w}/nope.yaml", 2, "nope.yaml"),
    Case("dp-unknown-key", "data-pipeline prepare {recipe} chunkk=3", 2, "chunkk"),
    Case(
        "dp-quality-unknown-key",
        "data-pipeline quality {recipe} --stage scan qualityy.dedup=true",
        2,
        "qualityy",
    ),
    Case("dp-bad-yaml", "data-pipeline prepare {bad_yaml}", 2, "bad.yaml"),
    Case(
        "dp-nan",
        "data-pipeline prepare {recipe} split.validation_fraction=nan",
        2,
        "validation_fraction",
    ),
    Case(
        "dp-missing-input",
        "data-pipeline prepare {recipe} output={w}/out1 source.paths=[{w}/absent.txt]",
        1,
        "absent.txt",
    ),
    Case(
        "dp-missing-tokenizer",
        "data-pipeline prepare {recipe} output={w}/out2 tokenizer={w}/no_tokenizer",
        1,
        "no_tokenizer",
    ),
    Case(
        "dp-tokenizer-key",
        "data-pipeline train-tokenizer {tok_recipe} vocab_size=lots",
        2,
        "vocab_size",
    ),
    Case(
        "dp-tokenizer-input",
        "data-pipeline train-tokenizer {tok_recipe} source.paths=[{w}/absent.txt]",
        1,
        "absent.txt",
    ),
    Case("dp-inspect-missing", "data-pipeline inspect {w}/absent/manifest.json", 1, "absent"),
    Case("dp-inspect-not-json", "data-pipeline inspect {not_json}", 1, "manifest.json"),
    Case("dp-verify-missing", "data-pipeline verify {w}/absent/manifest.json", 1, "absent"),
    Case("dp-verify-not-manifest", "data-pipeline verify {w}/exp.yaml", 1, "exp.yaml"),
    Case(
        "dp-finalize-nothing",
        "data-pipeline finalize {recipe} output={w}/empty_out",
        1,
        "empty_out",
    ),
    # -- pretrain config / plan ----------------------------------------------------------------
    Case("config-missing", "pretrain config {w}/nope.yaml", 2, "nope.yaml"),
    Case("config-bad-yaml", "pretrain config {bad_yaml}", 2, "bad.yaml"),
    Case("config-unknown-key", "pretrain config {exp} train.lrr=1", 2, "train.lrr"),
    Case("config-wrong-type", "pretrain config {exp} train.lr=fast", 2, "train.lr"),
    Case("config-inf", "pretrain config {exp} train.lr=.inf", 2, "train.lr"),
    Case(
        "config-save-into-a-file", "pretrain config {exp} --save-config {exp}/x.yaml", 1, "x.yaml"
    ),
    Case("plan-bad-memory", "pretrain plan {exp} --gpu-memory lots", 2, "--gpu-memory"),
    Case("plan-bad-key", "pretrain plan {exp} model.n_layers=0", 2, "model.n_layers"),
    Case("plan-no-gpus", "pretrain plan {exp} --gpus 0", 2, "--gpus"),
    # -- pretrain train ------------------------------------------------------------------------
    Case(
        "train-missing-manifest",
        "pretrain train {exp} data.manifest={w}/absent/manifest.json",
        1,
        "absent",
    ),
    Case(
        "train-not-json-manifest",
        "pretrain train {exp} data.manifest={not_json}",
        1,
        "manifest.json",
    ),
    Case("train-vocab-too-small", "pretrain train {exp} model.vocab_size=8", 1, "vocab_size"),
    Case(
        "train-unusable-checkpoints",
        "pretrain train {exp} checkpoint.dir={corrupt}",
        1,
        "trainer_state_rank0.pt",
    ),
    Case(
        "train-resume-not-a-step",
        "pretrain train {exp} train.resume={not_ckpt}",
        1,
        "not_a_checkpoint",
    ),
    Case(
        "train-resume-changed-model",
        "pretrain train {exp} model.n_layers=3 checkpoint.dir={ckpt}",
        1,
        "model.n_layers",
    ),
    Case("train-no-split", "pretrain train {exp} data.train_split=nosuch", 1, "nosuch"),
    Case("train-manifest-is-a-folder", "pretrain train {exp} data.manifest={w}", 1, "manifest"),
    Case(
        "train-checkpoint-dir-is-a-file",
        "pretrain train {exp} checkpoint.dir={exp}",
        1,
        "checkpoint.dir",
    ),
    # -- pretrain evaluate ---------------------------------------------------------------------
    Case("evaluate-data-is-a-folder", "pretrain evaluate {ckpt} --data {w}", 1, "manifest"),
    Case("evaluate-no-streams", "pretrain evaluate {ckpt} --streams 0", 2, "--streams"),
    Case("evaluate-bad-seq-len", "pretrain evaluate {ckpt} --seq-len 0", 1, "seq_len"),
    Case("evaluate-missing", "pretrain evaluate {w}/absent", 1, "absent"),
    Case(
        "evaluate-not-a-checkpoint", "pretrain evaluate {not_ckpt}", 1, "not a checkpoint directory"
    ),
    Case("evaluate-a-file", "pretrain evaluate {exp}", 1, "exp.yaml"),
    Case("evaluate-bad-step", "pretrain evaluate {ckpt} --step 7", 1, "no step 7"),
    Case("evaluate-corrupt", "pretrain evaluate {corrupt}", 1, "trainer_state_rank0.pt"),
    Case("evaluate-corrupt-step", "pretrain evaluate {corrupt} --step 4", 1, "step 4 is corrupt"),
    Case(
        "evaluate-other-tokenizer",
        "pretrain evaluate {ckpt} --data {other_tok}",
        1,
        "tokenized with",
    ),
    Case(
        "evaluate-missing-data",
        "pretrain evaluate {ckpt} --data {w}/absent/manifest.json",
        1,
        "absent",
    ),
    Case("evaluate-architecture", "pretrain evaluate {ckpt} model.n_layers=3", 1, "model.n_layers"),
    Case("evaluate-bad-override", "pretrain evaluate {ckpt} train.nokey=1", 1, "train.nokey"),
    Case("evaluate-unreadable-shards", "pretrain evaluate {ckpt}", 1, "step_0000004"),
    # An object store that does not answer (a closed port): named, after s3fs's own retries.
    Case(
        "evaluate-url-unreachable",
        "pretrain evaluate s3://nobucket/run --storage-options {s3_closed}",
        1,
        "cannot list s3://nobucket/run",
    ),
    Case(
        "evaluate-bad-storage-options",
        "pretrain evaluate s3://nobucket/run --storage-options [1]",
        2,
        "--storage-options",
    ),
    # -- pretrain export -----------------------------------------------------------------------
    Case("export-missing", "pretrain export {w}/absent {w}/out", 1, "absent"),
    Case("export-bad-step", "pretrain export {ckpt} {w}/out --step 9", 1, "no step 9"),
    Case("export-corrupt", "pretrain export {corrupt} {w}/out", 1, "trainer_state_rank0.pt"),
    Case(
        "export-missing-tokenizer",
        "pretrain export {ckpt} {w}/out --tokenizer {w}/no_tokenizer",
        1,
        "no_tokenizer",
    ),
    Case("export-unreadable-shards", "pretrain export {ckpt} {w}/out", 1, "step_0000004"),
    Case("export-into-a-file", "pretrain export {ckpt} {exp}", 1, "exp.yaml"),
    # -- pretrain generate ---------------------------------------------------------------------
    Case("generate-no-samples", "pretrain generate {export} --num-samples 0", 2, "--num-samples"),
    Case("generate-no-cache", "pretrain generate {export} --cache-len 0", 2, "--cache-len"),
    Case("generate-missing", "pretrain generate {w}/absent", 1, "absent"),
    Case("generate-not-a-model", "pretrain generate {not_ckpt}", 1, "not_a_checkpoint"),
    Case("generate-bad-step", "pretrain generate {ckpt} --step 3", 1, "no step 3"),
    Case("generate-top-p", "pretrain generate {export} --top-p 1.5", 1, "top_p"),
    Case(
        "generate-negative", "pretrain generate {export} --max-new-tokens -1", 1, "max_new_tokens"
    ),
    Case(
        "generate-missing-tokenizer",
        "pretrain generate {export} --tokenizer {w}/no_tokenizer",
        1,
        "no_tokenizer",
    ),
    Case(
        "generate-other-tokenizer",
        "pretrain generate {export} --tokenizer {char_tokenizer}",
        1,
        "tokenizer",
    ),
    Case("generate-no-weights", "pretrain generate {export_no_weights}", 1, "model.safetensors"),
    Case("generate-broken-info", "pretrain generate {export_broken_info}", 1, "export.json"),
    Case(
        "generate-broken-weights",
        "pretrain generate {export_broken_weights}",
        1,
        "model.safetensors",
    ),
    Case("generate-corrupt-checkpoint", "pretrain generate {corrupt}", 1, "trainer_state_rank0.pt"),
    # -- pretrain finetune / evaluate --task / make-task ---------------------------------------
    Case("finetune-unknown-key", "pretrain finetune {finetune} taskk.kind=seq2seq", 2, "taskk"),
    Case("finetune-bad-kind", "pretrain finetune {finetune} task.kind=regression", 2, "task.kind"),
    Case("finetune-bad-record", "pretrain finetune {finetune}", 1, "bad_records.jsonl:2: not JSON"),
    Case(
        "finetune-missing-column",
        "pretrain finetune {finetune} task.train={w}/records.csv",
        1,
        "records.csv:1: no column text",
    ),
    Case("finetune-missing-init", "pretrain finetune {finetune} init={w}/nope", 1, "nope"),
    Case(
        "evaluate-task-of-a-pretraining-checkpoint",
        "pretrain evaluate {ckpt} --task",
        1,
        "not a `pretrain finetune` checkpoint",
    ),
    Case(
        "make-task-missing-corpus", "pretrain make-task speakers {w}/absent.txt {w}/t", 1, "absent"
    ),
    Case(
        "make-task-wrong-corpus", "pretrain make-task headings {w}/bad.yaml {w}/t", 1, "no headings"
    ),
    # -- pretrain-launch -----------------------------------------------------------------------
    Case("launch-missing-profile", "pretrain-launch {w}/nope.yaml {exp}", 2, "nope.yaml"),
    Case("launch-bad-profile-key", "pretrain-launch {cluster} {exp} nnodes=two", 2, "nnodes"),
    Case("launch-missing-experiment", "pretrain-launch {cluster} {w}/nope.yaml", 2, "nope.yaml"),
    Case(
        "launch-bad-experiment-key", "pretrain-launch {cluster} {exp} train.lrr=1", 2, "train.lrr"
    ),
    Case(
        "launch-missing-manifest",
        "pretrain-launch {cluster} {exp} data.manifest={w}/absent/manifest.json",
        1,
        "absent",
    ),
    Case(
        "launch-bad-endpoint",
        "pretrain-launch {cluster} {exp} --rdzv-endpoint x",
        1,
        "--rdzv-endpoint",
    ),
    Case(
        "preflight-missing-experiment", "python -m launch.preflight {w}/nope.yaml", 1, "nope.yaml"
    ),
]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (name -> sha256), to prove nothing was changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _build(workdir: Path, char_manifest: Path) -> dict[str, str]:
    """The inputs the cases name; returns the placeholders."""
    data = workdir / "data"
    shutil.copytree(char_manifest.parent.parent, data)  # tokenizer, recipes and shards
    manifest = data / "data" / "manifest.json"
    exp = experiment_file(workdir, manifest)
    exp.rename(workdir / "exp.yaml")
    exp = workdir / "exp.yaml"
    recipe = data / "data.yaml"
    recipe.write_text(recipe.read_text().replace(str(char_manifest.parent.parent), str(data)))
    tok_recipe = data / "tokenizer.yaml"
    tok_recipe.write_text(
        tok_recipe.read_text().replace(str(char_manifest.parent.parent), str(data))
    )
    (workdir / "bad.yaml").write_text("model: [unclosed\n  d_model: 3\n")
    not_json = workdir / "not_json" / "manifest.json"
    not_json.parent.mkdir()
    not_json.write_text("{this is not json")
    not_ckpt = workdir / "not_a_checkpoint"
    not_ckpt.mkdir()
    (not_ckpt / "notes.txt").write_text("nothing here\n")
    # A committed checkpoint (stand-in shards) of the experiment, and a copy whose every step
    # fails verification.
    tokenizer_hash = json.loads(manifest.read_text())["tokenizer"]["hash"]
    ckpt_dir = committed_checkpoint(workdir, exp, extra={"tokenizer_hash": tokenizer_hash})
    corrupt = workdir / "corrupt" / "checkpoints"
    shutil.copytree(ckpt_dir, corrupt)
    for step in ckpt.committed_steps(corrupt):
        state = ckpt.trainer_state_path(ckpt.step_dir(corrupt, step), 0)
        state.write_bytes(state.read_bytes()[:10])
    # The same shards under a manifest that names another tokenizer.
    other = json.loads(manifest.read_text())
    other["tokenizer"]["hash"] = "0" * 64
    other_tok = data / "data" / "other_tokenizer.json"
    other_tok.write_text(json.dumps(other))
    # A tiny export, and broken copies of it.
    tokenizer = tiny_tokenizer(workdir)
    export = tiny_export(workdir, tokenizer)
    broken = {}
    for kind in ("no_weights", "broken_info", "broken_weights"):
        copy = workdir / f"export_{kind}"
        shutil.copytree(export, copy)
        broken[f"export_{kind}"] = str(copy)
    (workdir / "export_no_weights" / "model.safetensors").unlink()
    (workdir / "export_broken_info" / "export.json").write_text("{")
    weights = workdir / "export_broken_weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # A fine-tuning config from the export whose training records break at line 2.
    records = workdir / "bad_records.jsonl"
    records.write_text('{"text": "a", "label": "x"}\n{not json\n')
    (workdir / "records.csv").write_text("sentence,label\nhello,x\n")
    finetune = workdir / "finetune.yaml"
    finetune.write_text(
        f"init: {export}\ntask:\n  kind: classification\n  train: {records}\n"
        f"  validation: {records}\ncheckpoint:\n  dir: {workdir / 'ft_checkpoints'}\n"
    )
    s3_closed = workdir / "s3_closed.json"
    s3_closed.write_text(
        json.dumps(
            {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
        )
    )
    return {
        "w": str(workdir),
        "finetune": str(finetune),
        "s3_closed": str(s3_closed),
        "exp": str(exp),
        "recipe": str(recipe),
        "tok_recipe": str(tok_recipe),
        "bad_yaml": str(workdir / "bad.yaml"),
        "not_json": str(not_json),
        "not_ckpt": str(not_ckpt),
        "ckpt": str(ckpt_dir),
        "corrupt": str(corrupt),
        "other_tok": str(other_tok),
        "export": str(export),
        "char_tokenizer": str(data / "tokenizer"),
        "cluster": str(REPO_ROOT / "configs" / "cluster" / "local_cpu.yaml"),
        **broken,
    }


MODULES = {
    "data-pipeline": ["data_pipeline.cli"],
    "pretrain": ["pretrain.cli"],
    "pretrain-launch": ["launch.cli"],
    "python -m launch.preflight": ["launch.preflight"],
}


@dataclass
class Result:
    case: Case
    returncode: int
    stdout: str
    stderr: str


def _run(case: Case, paths: dict[str, str], cwd: Path) -> Result:
    words = case.command.format(**paths).split()
    program = words[:3] if words[0] == "python" else words[:1]
    args = [*MODULES[" ".join(program)], *words[len(program) :]]
    env = distributed_env({"MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"})
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd,  # relative outputs (runs/, mlruns) stay in the test's folder
        env=env,
        timeout=300,
    )
    return Result(case, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def results(
    char_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Result, bool]]:
    """Every case run once (in parallel); for each, whether the inputs were left as they were."""
    workdir = tmp_path_factory.mktemp("error_paths")
    paths = _build(workdir, char_manifest)
    inputs = workdir.parent / f"{workdir.name}_cwd"
    inputs.mkdir()
    before = _tree(workdir)
    workers = max(2, min(8, (os.cpu_count() or 2) * 2))
    with ThreadPoolExecutor(workers) as pool:
        ran = list(pool.map(lambda c: _run(c, paths, inputs), CASES))
    after = _tree(workdir)
    changed = {name for name in before if before[name] != after.get(name)}
    untouched = not changed
    return {r.case.name: (r, untouched) for r in ran}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_error_line_and_no_traceback(
    results: dict[str, tuple[Result, bool]], case: Case
) -> None:
    result, untouched = results[case.name]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == case.code, output
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert case.says in errors[0], result.stderr
    assert untouched, "a failed command changed its inputs"


def test_every_subcommand_has_error_cases() -> None:
    """A subcommand added without error cases here fails this."""
    from data_pipeline.cli import build_parser as data_pipeline_parser
    from pretrain.cli import COMMANDS

    covered = {tuple(c.command.split()[:2]) for c in CASES}
    for name, *_ in COMMANDS:
        assert ("pretrain", name) in covered, name
    subs = data_pipeline_parser()._subparsers
    assert subs is not None
    choices = next(a for a in subs._group_actions if a.choices).choices
    assert choices is not None
    for name in choices:
        assert ("data-pipeline", name) in covered, name
    assert any(c.command.startswith("pretrain-launch ") for c in CASES)
