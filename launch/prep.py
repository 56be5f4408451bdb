"""`python -m launch.prep`: data preparation on SLURM, as job arrays chained by dependencies.

One sbatch script per step, each a plain bash file a person can read and resubmit by hand:

  quality scan     array of --tasks      (only when the recipe has a quality section)
  quality buckets  array of --bucket-tasks (only with MinHash)
  quality clusters one job
  prepare          array of --tasks
  finalize         one job: manifest.json

Array task i runs ``data-pipeline STEP RECIPE --num-tasks N --task-index $SLURM_ARRAY_TASK_ID``;
``%K`` in ``--array=0-(N-1)%K`` bounds how many run at once (``--max-concurrent``). Each step is
submitted with ``--dependency=afterok:<previous job>``, so it starts only once every task of the
step before it succeeded. Every step is resumable: a failed task is rerun alone with
``sbatch --array=<i> <its script>`` (committed units and stage files are skipped, never redone),
then the remaining steps are submitted again (`--from STEP --after <rerun job>`). The steps
already queued behind the failed one never start: their afterok can no longer be met, and
``--kill-on-invalid-dep=yes`` has SLURM cancel them (not leave them pending for ever).
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.config_cli import HelpFormatter
from data_pipeline.configuration import ConfigError, load_config
from data_pipeline.console import add_console_arguments, setup_console, verbosity
from data_pipeline.schemas import PrepareConfig
from launch.backends.slurm import placement_options
from launch.config import ClusterConfig, add_cluster_set_argument

logger = logging.getLogger(__name__)

STEPS = ("scan", "buckets", "clusters", "prepare", "finalize")

EPILOG = """examples:
  python -m launch.prep configs/cluster/slurm_cpu.yaml configs/data/wikitext2_quality.yaml \\
      --tasks 8 --max-concurrent 4 --dry-run
  python -m launch.prep configs/cluster/slurm_cpu.yaml configs/data/wikitext2_quality.yaml \\
      --tasks 8 -c partition=cpu
  # after fixing what made prepare task 3 fail: rerun it alone, then what follows once it
  # succeeded (scancel the old finalize if it still waits on DependencyNeverSatisfied)
  job=$(sbatch --parsable --array=3 runs/slurm/wikitext2_quality-prepare.sbatch)
  python -m launch.prep CLUSTER RECIPE --tasks 8 --from finalize --after "$job"
"""


@dataclass
class Step:
    name: str  # one of STEPS
    tasks: int  # > 1: an array of this many tasks; 1: one job

    @property
    def array(self) -> bool:
        return self.name in ("scan", "buckets", "prepare")


def plan_steps(cfg: PrepareConfig, tasks: int, bucket_tasks: int) -> list[Step]:
    steps: list[Step] = []
    if cfg.quality.enabled:
        steps.append(Step("scan", tasks))
        if cfg.quality.minhash.enabled:
            steps.append(Step("buckets", min(bucket_tasks, cfg.quality.minhash.bands)))
        steps.append(Step("clusters", 1))
    steps += [Step("prepare", tasks), Step("finalize", 1)]
    return steps


def command(step: Step, python: str, recipe: str, overrides: list[str]) -> list[str]:
    """The data-pipeline command line of one task of ``step``."""
    base = [python, "-m", "data_pipeline.cli"]
    if step.name in ("scan", "buckets", "clusters"):
        base += ["quality", recipe, *overrides, "--stage", step.name]
    else:
        base += [step.name, recipe, *overrides]
    if step.array:
        base += ["--num-tasks", str(step.tasks), "--task-index", "$SLURM_ARRAY_TASK_ID"]
    if step.name in ("scan", "prepare"):
        base += ["--workers", "${SLURM_CPUS_PER_TASK:-1}"]
    return base


def _word(arg: str) -> str:
    return f'"{arg}"' if "$" in arg else shlex.quote(arg)


def render(
    cluster: ClusterConfig,
    step: Step,
    recipe: str,
    overrides: list[str],
    *,
    name: str,
    max_concurrent: int,
    workdir: Path,
) -> str:
    out = Path(cluster.output_dir)
    out = out if out.is_absolute() else workdir / out
    job = f"{name}-{step.name}"
    options = [
        f"--job-name={job}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={cluster.cpus_per_task}",
        f"--time={cluster.time_limit}",
        f"--output={out}/%x-" + ("%A_%a" if step.array else "%j") + ".out",
        "--open-mode=append",
    ]
    if step.array:
        options.append(f"--array=0-{step.tasks - 1}%{max_concurrent}")
    options += placement_options(cluster)
    options += cluster.sbatch_extra
    what = f"array of {step.tasks} tasks" if step.array else "one job"
    lines = [
        "#!/usr/bin/env bash",
        *(f"#SBATCH {option}" for option in options),
        f"# data preparation, step {step.name} ({what}) of {recipe}",
        "# Rendered by launch.prep; submitted after the previous step with --dependency=afterok.",
        "# Resumable: rerun a failed task alone with sbatch --array=<index> <this file>."
        if step.array
        else "# Resumable: resubmit this file; what is committed is not redone.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *cluster.env_setup,
        *(
            f"export {k}={shlex.quote(v)}"
            for k, v in {"PYTHONUNBUFFERED": "1", **cluster.env}.items()
        ),
        f"mkdir -p {shlex.quote(str(out))}",
        " ".join(_word(a) for a in command(step, cluster.python, recipe, overrides)),
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.prep",
        description="Prepare a corpus on SLURM: quality stages, prepare and finalize as job "
        "arrays chained with --dependency=afterok; --dry-run prints the scripts.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_console_arguments(parser, "launch.prep")
    parser.add_argument("cluster", metavar="CLUSTER", help="cluster profile (configs/cluster/)")
    parser.add_argument("recipe", metavar="RECIPE", help="data recipe (configs/data/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--tasks", type=int, default=4, help="array tasks (scan and prepare)")
    parser.add_argument(
        "--bucket-tasks", type=int, default=4, help="array tasks of the MinHash buckets stage"
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=8, help="array tasks running at once (%%K)"
    )
    parser.add_argument("--from", dest="first", choices=STEPS, help="submit from this step on")
    parser.add_argument(
        "--after",
        metavar="JOB",
        help="the first step submitted waits for this job (afterok): a rerun array task",
    )
    add_cluster_set_argument(parser, example="-c partition=cpu")
    parser.add_argument("--dry-run", action="store_true", help="print the scripts; submit none")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    setup_console(verbosity(args))
    if args.tasks < 1 or args.bucket_tasks < 1 or args.max_concurrent < 1:
        print("error: --tasks, --bucket-tasks and --max-concurrent must be >= 1", file=sys.stderr)
        return 2
    if args.after is not None and not re.fullmatch(r"\d+(_\d+)?", args.after):
        print(f"error: --after {args.after}: not a SLURM job id (like 1234)", file=sys.stderr)
        return 2
    try:
        cluster = load_config(ClusterConfig, args.cluster, args.cluster_set)
        cfg = load_config(PrepareConfig, args.recipe, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = Path.cwd()
    recipe = str(Path(args.recipe).resolve())
    name = cluster.job_name or cfg.name
    steps = plan_steps(cfg, args.tasks, args.bucket_tasks)
    if args.first:
        names = [s.name for s in steps]
        if args.first not in names:
            print(f"error: --from {args.first}: this recipe's steps are {names}", file=sys.stderr)
            return 2
        steps = steps[names.index(args.first) :]
    out = Path(cluster.output_dir)
    out = out if out.is_absolute() else workdir / out
    # Without --after, the first step starts at once: right for a fresh run, wrong while a
    # rerun task of the step before it is still queued (finalize would find units missing).
    previous: str | None = args.after
    for step in steps:
        text = render(
            cluster,
            step,
            recipe,
            args.overrides,
            name=name,
            max_concurrent=args.max_concurrent,
            workdir=workdir,
        )
        path = out / f"{name}-{step.name}.sbatch"
        # A step whose afterok can no longer be met (a task before it failed) is cancelled by
        # SLURM rather than left pending for ever: a rerun submits the rest anew (--from).
        dependency = (
            []
            if previous is None
            else [f"--dependency=afterok:{previous}", "--kill-on-invalid-dep=yes"]
        )
        if args.dry_run:
            previous = f"<{step.name} job id>"
            print(f"# ==== {path}: sbatch {' '.join([*dependency, str(path)])}")
            sys.stdout.write(text)
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        cmd = ["sbatch", "--parsable", *dependency, str(path)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"error: {' '.join(cmd)}: {result.stderr.strip()}", file=sys.stderr)
            return 1
        previous = result.stdout.strip().split(";")[0]
        print(f"{step.name}: job {previous} ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
