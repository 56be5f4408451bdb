"""slurm: an sbatch script. One torchrun agent per node (srun), rendezvous on the first node.

Preemption and time limits: ``--signal=B:USR1@S`` asks SLURM to signal this batch shell S
seconds before the end. The shell's trap forwards the signal to srun, srun to the torchrun
agents, torchrun to the ranks; the trainer saves a checkpoint at the next step and exits 75.
The shell then requeues the job (``scontrol requeue``) and the next run resumes by itself from
checkpoint.dir. A SIGTERM (scancel, preemption by a higher-priority job) takes the same path.
Logs open in append mode, so a requeued job's output continues in the same file.
"""

from __future__ import annotations

from launch.backends.deepspeed import deepspeed_args
from launch.config import ClusterConfig
from launch.script import Job, continued, header, quote, render_text, signal_env, torchrun_args

REQUEUE_EXIT_CODE = 75  # pretrain.train.preemption.PREEMPTED_EXIT_CODE; no torch import here


def directives(job: Job) -> list[str]:
    c = job.cluster
    out = job.output_dir
    options = [
        f"--job-name={c.job_name}",
        f"--nodes={c.nnodes}",
        "--ntasks-per-node=1",  # one launcher per node; it starts nproc_per_node ranks
        f"--cpus-per-task={c.cpus_per_task}",
        f"--time={c.time_limit}",
        f"--output={out}/%x-%j.out",
        "--open-mode=append",
        f"--signal=B:USR1@{c.preempt_signal_s}",
    ]
    if c.gpus_per_node:
        options.append(f"--gpus-per-node={c.gpus_per_node}")
    options += placement_options(c)
    options.append("--requeue" if c.requeue else "--no-requeue")
    options += c.sbatch_extra
    return [f"#SBATCH {option}" for option in options]


def launcher(job: Job) -> list[str]:
    """The command that starts every rank; its pid is what the trap forwards signals to."""
    c = job.cluster
    if c.slurm_launcher == "deepspeed":
        # DeepSpeed wants a hostfile: derive it from the allocation, one line per node.
        return [
            'hostfile="$out/hostfile-$SLURM_JOB_ID"',
            'scontrol show hostnames "$SLURM_JOB_NODELIST" | '
            f"sed 's/$/ slots={c.nproc_per_node}/' > \"$hostfile\"",
            continued(deepspeed_args(job, "$hostfile")) + " &",
        ]
    rdzv = [
        "--nnodes=$SLURM_JOB_NUM_NODES",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=$head:{c.rdzv_port}",
        "--rdzv_id=$SLURM_JOB_ID",
    ]
    srun = ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "--ntasks=$SLURM_JOB_NUM_NODES"]
    return [continued(srun) + " \\\n  " + continued(torchrun_args(job, rdzv=rdzv)) + " &"]


def render(job: Job) -> str:
    c = job.cluster
    title = (
        f"SLURM job: {c.nnodes} node(s) x {c.nproc_per_node} process(es); "
        f"submit with: sbatch <this file>"
    )
    lines = header(job, title, directives(job))
    lines += signal_env(c.preempt_signal_s)
    lines += [
        f"out={job.output_dir}",
        'mkdir -p "$out"',
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'echo "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST;'
        f' rendezvous $head:{c.rdzv_port}"',
        "",
        "# Preflight on every node: the checkpoint directory must be writable from each of them.",
        "srun --ntasks-per-node=1 --ntasks=$SLURM_JOB_NUM_NODES "
        f"{c.python} -m launch.preflight {quote([job.experiment, *job.overrides])} || exit 1",
        "",
        "# A signal (USR1 before the time limit, TERM on preemption) goes to the launcher; the",
        "# ranks checkpoint and exit, and the job is requeued below.",
        "preempted=0",
        'forward() { preempted=1; echo "received SIG$1: forwarding to the ranks"; '
        'kill -s "$1" "$step" 2>/dev/null || true; }',
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        *launcher(job),
        "step=$!",
        "# wait returns early when a trapped signal arrives: wait again until the step ends.",
        'wait "$step"; status=$?',
        'while kill -0 "$step" 2>/dev/null; do wait "$step"; status=$?; done',
        'echo "launcher exited with status $status"',
    ]
    if c.requeue:
        lines += [
            f'if [ "$status" -ne 0 ] && {{ [ "$status" -eq {REQUEUE_EXIT_CODE} ] '
            '|| [ "$preempted" -eq 1 ]; }; then',
            '  echo "preempted: checkpoint saved; requeueing job $SLURM_JOB_ID"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "  exit 0",
            "fi",
        ]
    lines.append('exit "$status"')
    return render_text(lines)


def placement_options(c: ClusterConfig) -> list[str]:
    """Where a job may run and what it may hold: the profile's partition, account and memory."""
    options = []
    if c.partition:
        options.append(f"--partition={c.partition}")
    if c.account:
        options.append(f"--account={c.account}")
    if c.mem is not None:
        options.append(f"--mem={c.mem}")
    return options
