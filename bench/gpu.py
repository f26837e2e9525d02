"""GPU readiness (issue 12): what one GPU does with raygan's training step and with a search.

Steps. Images/s of raygan's `train_step` against a plain PyTorch loop of the same G and D
(bench/step_throughput.py's `PlainLoop`: the networks called directly, Adam, BCE), in bf16
autocast and in fp32, at batch 64 and 256, for two models:

  builtin  raygan's own architecture at a realistic width (ModelConfig channels=64, 64x64);
  dcgan    a user-style DCGAN CGAN (bench/user_dcgan.py, width 64) behind the `torch` adapter.

Weights are random and batches synthetic, made on the GPU up front: throughput depends on
neither. The two sides alternate in blocks of `--steps` steps (ABBA), synchronising only at
block ends, and the ratio is the median of per-block ratios (target: raygan >= 0.95x plain in
bf16). FLOPs per image are counted with torch.utils.flop_counter over one step (forward and
backward of both updates), so images/s is also given as a fraction of the GPU's bf16 dense
peak (PEAK_BF16_TFLOPS; 'unknown' for other GPUs).

Compile. raygan's step eager against `compile: true` (torch.compile of G and D) at the first
batch size, bf16: images/s of each (ABBA), the compile time paid by the first step, and the
steps a trial must run before compiling pays.

Search. Wall time of `raygan tune search_spaces/demo.yaml` as a subprocess with one GPU per
trial: a 1-trial search and a 4-trial search (trials run one at a time on one GPU). With
`workers: 1` raygan runs a trial in its Tune actor: Ray Train's TorchTrainer is for 2+ workers,
which one GPU cannot hold. The evaluation cache is warmed first, as any second search on the
machine finds it.

    bash bench/gpu.sh                                 # one GPU: writes bench/results/gpu.json
    python bench/gpu.py --dry-run --out /tmp/gpu.json # CPU, tiny sizes, fp32, no Ray
    python bench/gpu.py --dry-run --with-ray --out /tmp/gpu.json  # also 1-trial, 2-step searches
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, print_table, write_results
from step_throughput import PlainLoop, RayganStep, Step, plain_recipe, timed
from torch.utils.flop_counter import FlopCounterMode

import raygan.trial
from raygan.checkpoint import Checkpoint
from raygan.models.builtin import BuiltinGan, ModelConfig
from raygan.models.torch_user import TorchGan

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
TARGET_RATIO = 0.95
# Dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name();
# the first match wins, so "H100 PCIe" comes before the SXM part's "H100".
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 125.0}


@dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    steps: int  # per timed block
    reps: int  # timed blocks per side
    warmup: int  # untimed steps per side
    channels: int  # the built-in model's ModelConfig.channels
    resolution: int  # the built-in model's; the DCGAN is always 64x64
    dcgan_width: int
    search_steps: int
    search_batch: int
    eval_samples: int
    search_trials: tuple[int, ...]  # trials per timed search


# Timed blocks of 50 steps: at batch 64 a step is bound by kernel launches, and blocks of 20
# (0.4 s) swung 0.82-1.10x with the host's jitter.
GPU = Sizes((64, 256), ("bf16", "fp32"), 50, 7, 10, 64, 64, 64, 200, 64, 500, (1, 4))
DRY_RUN = Sizes((4,), ("fp32",), 3, 1, 1, 8, 32, 8, 2, 4, 20, (1, 1))


# ---- models -------------------------------------------------------------------------------


def builtin_base(sizes: Sizes) -> Checkpoint:
    cfg = ModelConfig(NUM_CLASSES, resolution=sizes.resolution, channels=sizes.channels)
    return Checkpoint.of(BuiltinGan(cfg), class_names(), {})


def dcgan_base(sizes: Sizes) -> Checkpoint:
    spec = {
        "adapter": "torch",
        "factory": f"{Path(__file__).with_name('user_dcgan.py')}:build",
        "factory_args": {"width": sizes.dcgan_width},
        "latent_dim": 128,
        "labels": "index",
    }
    return Checkpoint.of(TorchGan(spec, NUM_CLASSES), class_names(), {})


def class_names() -> list[str]:
    return [f"class{c}" for c in range(NUM_CLASSES)]


@dataclass(frozen=True)
class BenchModel:
    base: Callable[[Sizes], Checkpoint]  # the pretrained stand-in (random weights)
    resolution: Callable[[Sizes], int]
    encode: Callable[[torch.Tensor], torch.Tensor] | None  # labels for the plain loop's G, D


MODELS = {
    "builtin": BenchModel(builtin_base, lambda sizes: sizes.resolution, None),  # one-hot
    "dcgan": BenchModel(dcgan_base, lambda sizes: 64, lambda labels: labels),  # class indices
}


# ---- step throughput ----------------------------------------------------------------------


@contextlib.contextmanager
def raygan_precision(precision: str) -> Iterator[None]:
    """`train_step` always autocasts to bf16 on CUDA; its fp32 rows turn that off."""
    original = raygan.trial.autocast
    if precision == "fp32":
        raygan.trial.autocast = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        raygan.trial.autocast = original


def synthetic_batches(
    batch: int, size: int, device: torch.device, count: int = 4
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device),
            torch.randint(NUM_CLASSES, (batch,), generator=gen).to(device),
        )
        for _ in range(count)
    ]
    while True:
        yield from batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Step, batches: Iterator, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    batch = 0
    for _ in range(steps):
        real, labels = next(batches)
        step(real, labels)
        batch = len(real)
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def flops_per_step(step: Step, batches: Iterator) -> int:
    with FlopCounterMode(display=False) as counter:
        step(*next(batches))
    return counter.get_total_flops()


def step_row(
    model: str, batch: int, precision: str, sizes: Sizes, device: torch.device, peak: float | None
) -> dict[str, Any]:
    spec = MODELS[model]
    torch.manual_seed(0)
    base = spec.base(sizes)
    cfg = plain_recipe(batch)
    batches = synthetic_batches(batch, spec.resolution(sizes), device)
    with raygan_precision(precision):
        sides: dict[str, Step] = {
            "raygan": RayganStep(base, cfg, device),
            "plain": PlainLoop(base.build(), cfg, device, spec.encode, bf16=precision == "bf16"),
        }
        flops = flops_per_step(sides["raygan"], batches)  # doubles as a warm-up step
        for side in sides.values():
            for _ in range(sizes.warmup):
                side(*next(batches))
        samples: dict[str, list[float]] = {name: [] for name in sides}
        for rep in range(sizes.reps):
            for name in sides if rep % 2 == 0 else reversed(sides):
                samples[name].append(images_per_s(sides[name], batches, sizes.steps, device))
    ratios = [r / p for r, p in zip(samples["raygan"], samples["plain"], strict=True)]
    raygan_img_s = statistics.median(samples["raygan"])
    achieved = raygan_img_s * flops / batch / 1e12
    return {
        "model": model,
        "batch": batch,
        "precision": precision,
        "raygan_img_s": raygan_img_s,
        "plain_img_s": statistics.median(samples["plain"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "target": TARGET_RATIO if precision == "bf16" else None,
        "gflop_per_img": flops / batch / 1e9,
        "raygan_tflop_s": achieved,
        "peak_fraction": achieved / peak if peak else "unknown",
        "samples": samples,
    }


def compile_row(model: str, batch: int, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """raygan's step eager against `compile: true` (torch.compile of G and D), bf16 on a GPU:
    the compile time, paid once per trial process, against the per-step gain."""
    spec = MODELS[model]
    torch.manual_seed(0)
    base = spec.base(sizes)
    batches = synthetic_batches(batch, spec.resolution(sizes), device)
    sides: dict[str, Step] = {}
    first: dict[str, float] = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        sides[name] = RayganStep(base, plain_recipe(batch, compile=compiled), device)
        first[name] = timed(sides[name], next(batches), device)
        for _ in range(sizes.warmup):
            sides[name](*next(batches))
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(sizes.reps):
        for name in sides if rep % 2 == 0 else reversed(sides):
            samples[name].append(images_per_s(sides[name], batches, sizes.steps, device))
    eager, compiled = (statistics.median(samples[name]) for name in sides)
    step_gain_s = batch / eager - batch / compiled
    compile_s = first["compiled"] - first["eager"]
    return {
        "model": model,
        "batch": batch,
        "eager_img_s": eager,
        "compiled_img_s": compiled,
        "speedup": compiled / eager,
        "compile_s": compile_s,
        # Steps a trial must run before compiling pays; None: it never does.
        "break_even_steps": compile_s / step_gain_s if step_gain_s > 0 else None,
        "samples": samples,
    }


def peak_bf16_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


# ---- searches -----------------------------------------------------------------------------


def warm_evaluation_cache(sizes: Sizes) -> float:
    """Train the evaluation classifier and cache real features, as a first search would."""
    from raygan.data import load_dataset
    from raygan.metrics.evaluate import Evaluator

    start = time.perf_counter()
    Evaluator(load_dataset("demo:target", 64), sizes.eval_samples)
    return time.perf_counter() - start


def search_row(name: str, trials: int, sizes: Sizes, gpus: int, storage: Path) -> dict[str, Any]:
    """`raygan tune` of the demo search cut to `trials` trials, in a subprocess on a fresh
    local Ray cluster."""
    overrides = {
        "num_trials": trials,
        "trial.steps": sizes.search_steps,
        "trial.eval_every": max(1, sizes.search_steps // 2),
        "trial.batch_size": sizes.search_batch,
        "trial.eval_samples": sizes.eval_samples,
        "gpus_per_worker": gpus,
    }
    command = [sys.executable, "-m", "raygan", "tune", str(ROOT / "search_spaces" / "demo.yaml")]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    command += ["--storage", str(storage), "--name", name]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join a cluster
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    reports = [
        [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        for file in (storage / name).glob("*/result.json")
    ]
    return {
        "search": f"{trials}-trial",
        "trials_run": len(reports),
        "gpus_per_trial": gpus,
        "batch": sizes.search_batch,
        "steps_per_trial": sizes.search_steps,
        "steps_trained": sum(max(r.get("step", 0) for r in rs) for rs in reports if rs),
        "trial_s": sum(rs[-1].get("time_total_s", 0.0) for rs in reports if rs),
        "wall_s": wall,
        "command": " ".join(command),
    }


Job = Callable[[], dict[str, Any] | None]  # one row of a section, or None


# ---- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, fp32; Ray skipped")
    p.add_argument("--with-ray", action="store_true", help="dry run: also run 2-step searches")
    p.add_argument("--skip-ray", action="store_true", help="GPU run: step throughput only")
    p.add_argument("--out", type=Path, help="result JSON (default for GPU runs: results/gpu.json)")
    args = p.parse_args()
    if args.dry_run and args.out is None:
        p.error("--dry-run needs --out: bench/results/gpu.json holds GPU numbers only")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: this benchmark needs a GPU (or --dry-run)")
    return args


class Recorder:
    """Rows by section, written to `out` after every row: a device lease that runs out keeps
    what was measured, and a failing row is recorded under `errors` while the others go on."""

    def __init__(self, out: Path, settings: dict[str, Any], note: str) -> None:
        self.out, self.settings, self.note = out, settings, note
        self.sections: dict[str, list[dict[str, Any]]] = {
            "rows": [],
            "searches": [],
            "compiles": [],
        }
        self.errors: list[str] = []

    def run(self, section: str, jobs: list[Job]) -> None:
        rows = self.sections[section]
        for job in jobs:
            try:
                row = job()
            except Exception as exc:  # one broken row must not cost the others' numbers
                self.errors.append(f"{section}: {type(exc).__name__}: {exc}")
                print(f"{section} failed: {exc}", file=sys.stderr)
            else:
                rows += [row] if row is not None else []
            self.save()
        if rows:
            print_table(rows, [k for k in rows[0] if k not in ("samples", "command")])

    def save(self) -> None:
        s = self.sections
        write_results(
            "gpu",
            self.settings,
            s["rows"],
            path=self.out,
            note=self.note,
            errors=self.errors,
            searches=s["searches"],
            compiles=s["compiles"],
        )


def main() -> None:
    args = parse_args()
    sizes = DRY_RUN if args.dry_run else GPU
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # as a 1-CPU trial; more threads crawl on a busy 2-core box
    peak = peak_bf16_tflops(device)
    settings = {
        **asdict(sizes),
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "peak_bf16_tflops": peak,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "eval_cache_warm_s": None,
    }
    note = (
        "dry run on CPU at tiny sizes: checks the script, the numbers mean nothing"
        if args.dry_run
        else "one GPU; ratios are measured interleaved within one run"
    )
    record = Recorder(args.out or RESULTS / "gpu.json", settings, note)
    record.run(
        "rows",
        [
            functools.partial(step_row, model, batch, precision, sizes, device, peak)
            for model in MODELS
            for batch in sizes.batches
            for precision in sizes.precisions
        ],
    )
    if args.with_ray if args.dry_run else not args.skip_ray:
        record.run("searches", search_jobs(sizes, 0 if args.dry_run else 1, settings))
    # Last: compiling is the slowest part and the least needed.
    record.run(
        "compiles",
        [functools.partial(compile_row, m, sizes.batches[0], sizes, device) for m in MODELS],
    )
    print("wrote", record.out)
    if record.errors:
        sys.exit("failed: " + "; ".join(record.errors))


def search_jobs(sizes: Sizes, gpus: int, settings: dict[str, Any]) -> list[Job]:
    """Warm the evaluation cache (its time goes into `settings`), then each search."""
    storage = Path(tempfile.mkdtemp(prefix="raygan-bench-gpu-"))

    def warm_cache() -> None:
        settings["eval_cache_warm_s"] = warm_evaluation_cache(sizes)

    searches = [
        functools.partial(search_row, f"search-{i}", n, sizes, gpus, storage)
        for i, n in enumerate(sizes.search_trials)
    ]
    return [warm_cache, *searches]


if __name__ == "__main__":
    main()
