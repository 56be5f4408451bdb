"""Checkpoint save time: the trainer's committed save against DeepSpeed's bare `save_checkpoint`.

One 2-process ZeRO-3 bf16 job (gloo, CPU) builds a ~100M-parameter decoder, takes one optimizer
step (so the Adam moments exist and are saved), then saves it repeatedly, interleaving:

* **bare**: ``engine.save_checkpoint(root, tag)``, DeepSpeed alone (no hashes, no marker);
* **hashed write (sha256)**: DeepSpeed's save with every shard hashed as it is written, with
  sha256 (the digest markers recorded before xxh3-128), to measure the digest's own cost in the
  same run; **hashed write**: the same with the trainer's digest (xxh3-128);
* **trainer**: `pretrain.checkpoint.state.save`: the same DeepSpeed save with every rank's
  shards hashed as they are written, the per-rank trainer state, the config files (hashed by
  their rank), the digests gathered into ``COMMITTED`` and ``latest``;
* **rank-0 hashing** (the previous protocol, for comparison): DeepSpeed's save, a barrier,
  then rank 0 reading and hashing every rank's files alone while the others wait.

Besides the wall time, the CPU time both ranks spend in each save is summed (``process_time``,
user + system, all threads): on a machine that other jobs load, it says what a save costs far
more steadily than the wall time does.

Each save is timed on rank 0 from a barrier before it to a barrier after it, after an
``os.sync()`` (untimed) so that no save pays for the writeback of the ones before it; the order of
the variants rotates from round to round. The page cache is not dropped (a save's files are read
back by its own hashing while still cached, as in a run).

    PYTHONPATH=. python benchmarks/checkpoint_save.py --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# 12 layers of 768 (GPT-2 small's blocks) with a small vocabulary: ~85M in the blocks, plus
# 2 more layers to reach ~100M parameters.
SHAPE = [
    "model.family=decoder",
    "model.vocab_size=96",
    "model.d_model=768",
    "model.n_layers=14",
    "model.n_heads=12",
    "model.max_seq_len=64",
    "train.seq_len=32",
    "train.micro_batch_size=1",
    "train.grad_accum=1",
    "train.warmup_steps=0",
    "engine.zero_stage=3",
    "engine.precision=bf16",
]


def worker(repeats: int, root: str) -> None:
    import torch
    import torch.distributed as dist

    from data_pipeline.configuration import load_config
    from pretrain.batch_loss import forward_loss
    from pretrain.checkpoint import layout as ckpt
    from pretrain.checkpoint import state as train_checkpoint
    from pretrain.config import ExperimentConfig
    from pretrain.distributed import engine as eng
    from pretrain.faults import Faults

    # keep_last above the save count: deleting an older step (pruning) is not part of a save,
    # and the bare save deletes nothing either.
    overrides = [*SHAPE, f"checkpoint.dir={root}/trainer", "checkpoint.keep_last=100"]
    config = load_config(ExperimentConfig, None, overrides)
    engine = eng.initialize(config)
    rank = dist.get_rank()
    params = sum(p.ds_numel for p in engine.model.module.parameters())
    tokens = torch.randint(0, config.model.vocab_size, (1, config.train.seq_len + 1))
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}
    parts = forward_loss(engine.model, batch, None, config.model.family)
    engine.model.backward(parts.loss_sum)
    engine.model.step()

    state = train_checkpoint.TrainerState(
        step=0, tokens_seen=0, skipped_steps=0, consecutive_skips=0, loader={}, mems=[],
        rng=ckpt.capture_rng_state(), run_id=None,
    )  # fmt: skip

    def timed(action: object) -> tuple[float, float]:
        """(wall seconds on rank 0, CPU seconds of both ranks together) of ``action``."""
        # Every save starts with the previous saves' dirty pages written back (outside the
        # timing): otherwise a save that follows others in a round pays for their writeback.
        os.sync()
        dist.barrier()
        started, cpu = time.perf_counter(), time.process_time()
        action()  # type: ignore[operator]
        dist.barrier()
        wall = time.perf_counter() - started
        spent = torch.tensor([time.process_time() - cpu], dtype=torch.float64)
        dist.all_reduce(spent)
        return wall, float(spent.item())

    def bare() -> None:
        engine.model.save_checkpoint(f"{root}/bare", tag=f"step_{state.step:07d}")

    def hashed_write() -> None:
        eng.save_checkpoint(
            engine.model, f"{root}/hashed", f"step_{state.step:07d}", (ckpt.DIGEST, ckpt.new_digest)
        )

    timeline = train_checkpoint.Timeline()  # one run: each repeat replaces its own step

    def hashed_write_sha256() -> None:
        eng.save_checkpoint(
            engine.model, f"{root}/sha256", f"step_{state.step:07d}", ("sha256", hashlib.sha256)
        )

    def trainer() -> None:
        train_checkpoint.save(engine, config, state, faults=Faults(), extra={}, timeline=timeline)

    def rank0_hashing() -> None:
        directory = ckpt.step_dir(f"{root}/serial", state.step)
        engine.model.save_checkpoint(f"{root}/serial", tag=directory.name)
        dist.barrier()
        if rank == 0:
            ckpt.commit(directory, step=state.step, world_size=dist.get_world_size())

    times: dict[str, list[float]] = {
        "bare": [],
        "hashed_write": [],
        "hashed_write_sha256": [],
        "trainer": [],
        "rank0_hashing": [],
    }
    cpu: dict[str, list[float]] = {name: [] for name in times}
    variants = [
        ("bare", bare),
        ("hashed_write", hashed_write),
        ("hashed_write_sha256", hashed_write_sha256),
        ("trainer", trainer),
        ("rank0_hashing", rank0_hashing),
    ]
    for repeat in range(repeats + 1):  # the first round warms up and is not counted
        state.step = repeat + 1
        # The order rotates each round, so no variant always follows the same other one.
        shift = repeat % len(variants)
        for name, action in variants[shift:] + variants[:shift]:
            seconds, cpu_seconds = timed(action)
            if repeat:
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
        if rank == 0:  # keep one step of each on disk
            for kind in ("bare", "hashed", "sha256", "serial", "trainer"):
                shutil.rmtree(f"{root}/{kind}/step_{state.step - 1:07d}", ignore_errors=True)
    if rank == 0:
        size = sum(f.stat().st_size for f in Path(root, "bare").rglob("*") if f.is_file())
        report = {"params": params, "bytes": size, "times": times, "cpu": cpu}
        print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("REPEATS", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), args.worker[1])
        return
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as root:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd += [__file__, "--worker", str(args.repeats), root]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit("the benchmark job failed")
    line = next(x for x in result.stdout.splitlines() if x.startswith('{"params"'))
    report = json.loads(line)
    median = {name: statistics.median(values) for name, values in report["times"].items()}
    print(f"{report['params'] / 1e6:.1f}M parameters, {report['bytes'] / 2**20:.0f} MiB per save")
    cpu = {name: statistics.median(values) for name, values in report["cpu"].items()}
    for name, values in report["times"].items():
        speed = median["bare"] / median[name]
        runs = ", ".join(f"{v:.2f}" for v in values)
        fastest = min(report["times"]["bare"]) / min(values)
        print(
            f"{name:>20}: median {median[name]:.2f} s ({runs}); speed vs bare {speed:.2f}x "
            f"(fastest rounds: {fastest:.2f}x)"
        )
    for name, values in report["cpu"].items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{name:>20}: CPU (both ranks) median {cpu[name]:.2f} s ({runs}); "
            f"bare's CPU / this one's {cpu['bare'] / cpu[name]:.2f}x"
        )


if __name__ == "__main__":
    main()
