"""deepspeed: the DeepSpeed launcher with a hostfile; it reaches the other nodes over ssh (pdsh).

The hostfile lists ``host slots=N`` per line; ``include``/``exclude`` select hosts and slots
(``worker-0@worker-1:0,2``). ``--no_local_rank``: the trainer reads LOCAL_RANK from the
environment and its command line takes config overrides only.
"""

from __future__ import annotations

from launch.hosts import hostfile_hosts, is_local_host
from launch.script import Job, continued, header, render_text


def deepspeed_args(job: Job, hostfile: str | None) -> list[str]:
    c = job.cluster
    args = ["deepspeed"]
    if hostfile:
        args.append(f"--hostfile={hostfile}")
        if _all_local(job, hostfile):
            # Every host is this machine: DeepSpeed runs it locally and needs no ssh.
            args.append("--no_ssh_check")
        else:
            args.append(f"--launcher={c.deepspeed_launcher}")
    else:
        args.append(f"--num_gpus={c.nproc_per_node}")
    if c.include:
        args.append(f"--include={c.include}")
    if c.exclude:
        args.append(f"--exclude={c.exclude}")
    master = "$head" if job.cluster.backend == "slurm" else c.rdzv_host
    args += [
        f"--master_addr={master}",
        f"--master_port={c.rdzv_port}",
        "--no_local_rank",
        "--module",
        *job.train_args(),
    ]
    return args


def _all_local(job: Job, hostfile: str) -> bool:
    """Whether every host of the hostfile is this machine (only known if the file is here)."""
    path = job.workdir / hostfile
    if hostfile.startswith("$") or not path.is_file():
        return False
    return all(map(is_local_host, hostfile_hosts(path)))


def render(job: Job) -> str:
    c = job.cluster
    where = f"hosts from {c.hostfile}" if c.hostfile else "this machine"
    lines = header(job, f"DeepSpeed launcher over {where}; master {c.rdzv_host}:{c.rdzv_port}.")
    lines.append("exec " + continued(deepspeed_args(job, c.hostfile)))
    return render_text(lines)
