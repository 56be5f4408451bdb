"""local: N processes on this machine, torchrun in standalone mode (a private rendezvous)."""

from __future__ import annotations

from launch.script import Job, continued, header, render_text, signal_env, torchrun_args


def render(job: Job) -> str:
    c = job.cluster
    lines = header(job, f"{c.nproc_per_node} process(es) on this machine (torchrun --standalone).")
    lines += signal_env(c.preempt_signal_s)
    # exec: a signal sent to this script reaches torchrun, which forwards it to the ranks.
    lines.append("exec " + continued(torchrun_args(job, rdzv=["--standalone", "--nnodes=1"])))
    return render_text(lines)
