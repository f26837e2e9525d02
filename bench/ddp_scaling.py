"""DDP scaling: train-step throughput of 1 vs 2 workers (gloo on CPU), raygan's own step.

Each configuration runs in fresh processes (`torch.multiprocessing.spawn`) that build G and D
with `raygan.trial.build_models` (DDP-wrapped when the process group has 2 ranks, exactly as in
a trial) and time `raygan.trial.train_step`. Configurations alternate within each repetition,
so they share the background load. Throughput counts images of the global batch per second.

The 2-worker runs also time a bare `all_reduce` of tensors as large as G's and D's gradients:
what the two gradient all-reduces of a step cost on their own. The step's FLOPs and the
parameter counts, for the multi-node estimate in bench/README.md, are measured here too.

    python bench/ddp_scaling.py                 # 2 repetitions, 10 timed steps
    python bench/ddp_scaling.py --reps 5 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import print_table, write_results
from torch.utils.flop_counter import FlopCounterMode

from raygan.config import TrialConfig
from raygan.data import load_dataset, sample_batches
from raygan.demo import load_base
from raygan.recipe import build_recipe
from raygan.trial import build_models, train_step, trainable_parameters


@dataclass(frozen=True)
class Setup:
    workers: int
    batch_per_worker: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.workers}w x {self.threads}t, batch {self.batch_per_worker}/worker"

    @property
    def global_batch(self) -> int:
        return self.workers * self.batch_per_worker


SETUPS = (
    Setup(1, 16, 1),  # a 1-CPU trial: the baseline
    Setup(1, 16, 2),  # the same trial given both cores as intra-op threads
    Setup(2, 8, 1),  # demo-ddp.yaml: global batch 16 over 2 workers (strong scaling)
    Setup(2, 16, 1),  # global batch 32 (weak scaling)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, setup: Setup, steps: int, warmup: int, port: int, out: str) -> None:
    torch.set_num_threads(setup.threads)
    if setup.workers > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=setup.workers
        )
    base = load_base("demo")
    data = load_dataset("demo:target", base.spec["resolution"])
    cfg = TrialConfig(batch_size=setup.batch_per_worker, lr=2e-4)
    m = build_models(cfg, base, torch.device("cpu"))
    recipe = build_recipe(cfg, m.model)
    stream = sample_batches(data, setup.batch_per_worker, seed=rank)
    batches = [next(stream) for _ in range(8)]
    for i in range(warmup):
        train_step(m, [batches[i % 8]], cfg, recipe, i + 1)
    barrier(setup)
    start = time.perf_counter()
    for i in range(steps):
        train_step(m, [batches[i % 8]], cfg, recipe, warmup + i + 1)
    barrier(setup)
    seconds = time.perf_counter() - start
    result = {"images_per_s": steps * setup.global_batch / seconds, "step_s": seconds / steps}
    if setup.workers > 1:
        result["allreduce_s"] = allreduce_seconds(m.model.g, m.model.d)
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def barrier(setup: Setup) -> None:
    if setup.workers > 1:
        dist.barrier()


def allreduce_seconds(g: torch.nn.Module, d: torch.nn.Module, reps: int = 20) -> float:
    """One all-reduce of G-sized plus one of D-sized flat fp32 tensors, median of `reps`."""
    tensors = [torch.zeros(sum(p.numel() for p in trainable_parameters(net))) for net in (g, d)]
    times = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        for t in tensors:
            dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(setup: Setup, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(worker, args=(setup, steps, warmup, free_port(), out), nprocs=setup.workers)
        return json.loads(Path(out).read_text())


def model_facts(batch: int = 16) -> dict:
    """Parameter counts, gradient bytes all-reduced per step and FLOPs of one step."""
    base = load_base("demo")
    cfg = TrialConfig(batch_size=batch)
    m = build_models(cfg, base, torch.device("cpu"))
    data = load_dataset("demo:target", base.spec["resolution"])
    batches = [next(sample_batches(data, batch, seed=0))]
    with FlopCounterMode(display=False) as counter:
        train_step(m, batches, cfg, build_recipe(cfg, m.model), 1)
    params = {
        name: sum(p.numel() for p in trainable_parameters(net))
        for name, net in (("g", m.model.g), ("d", m.model.d))
    }
    return {
        "params_g": params["g"],
        "params_d": params["d"],
        "grad_bytes_per_step": 4 * (params["g"] + params["d"]),  # fp32 grads, D then G
        "flops_per_step_batch16": counter.get_total_flops(),
        "resolution": base.spec["resolution"],
        "channels": base.spec["channels"],
    }


def summarise(samples: dict[Setup, list[dict]]) -> list[dict]:
    baseline = statistics.median(r["images_per_s"] for r in samples[SETUPS[0]])
    rows = []
    for setup, results in samples.items():
        ips = [r["images_per_s"] for r in results]
        row = {
            **asdict(setup),
            "global_batch": setup.global_batch,
            "img_s_median": statistics.median(ips),
            "img_s_min": min(ips),
            "img_s_max": max(ips),
            "step_s": statistics.median(r["step_s"] for r in results),
            "vs_1w1t": statistics.median(ips) / baseline,
        }
        if setup.workers > 1:
            row["allreduce_ms"] = 1e3 * statistics.median(r["allreduce_s"] for r in results)
        rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=2, help="launches per configuration")
    p.add_argument("--steps", type=int, default=10, help="timed steps per launch")
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    facts = model_facts()
    samples: dict[Setup, list[dict]] = {s: [] for s in SETUPS}
    for rep in range(args.reps):
        order = SETUPS if rep % 2 == 0 else tuple(reversed(SETUPS))
        for setup in order:
            samples[setup].append(run(setup, args.steps, args.warmup))
            print(f"rep {rep}: {setup.name}: {samples[setup][-1]}", flush=True)
    rows = summarise(samples)
    print_table(
        rows,
        [
            "workers",
            "threads",
            "batch_per_worker",
            "global_batch",
            "img_s_median",
            "img_s_min",
            "img_s_max",
            "step_s",
            "vs_1w1t",
            "allreduce_ms",
        ],
    )
    print_table([facts])
    print(
        "wrote",
        write_results(
            "ddp_scaling",
            vars(args),
            rows,
            model=facts,
            samples={s.name: v for s, v in samples.items()},
        ),
    )


if __name__ == "__main__":
    main()
