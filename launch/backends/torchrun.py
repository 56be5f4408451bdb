"""torchrun: one agent per node, joined by a c10d rendezvous on ``rdzv_host:rdzv_port``.

Run the same script on every node (only the file name differs). Ranks are assigned by the
rendezvous, so nodes need no fixed rank; ``max_restarts`` lets the agents restart every worker
after a failure, and the trainer then resumes from the newest committed checkpoint.
"""

from __future__ import annotations

from launch.script import Job, continued, header, render_text, signal_env, torchrun_args


def render(job: Job) -> str:
    c = job.cluster
    title = (
        f"Node of a {c.nnodes}-node job, {c.nproc_per_node} process(es) per node; "
        f"rendezvous c10d at {c.rdzv_host}:{c.rdzv_port}, id {c.rdzv_id}."
    )
    lines = [*header(job, title), *signal_env(c.preempt_signal_s)]
    rdzv = [
        f"--nnodes={c.nnodes}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={c.rdzv_host}:{c.rdzv_port}",
        f"--rdzv_id={c.rdzv_id}",
    ]
    lines.append("exec " + continued(torchrun_args(job, rdzv=rdzv)))
    return render_text(lines)
