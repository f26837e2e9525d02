"""Per-trial overhead: seconds from a trial's start to its first training step and to its first
reported metric, for one-worker trials (run in the Tune trial process) and 2-worker DDP trials
(Ray Train `TorchTrainer`, gloo on CPU).

Each measurement is a real one-trial search through `raygan.search.run_search` with the demo
search spaces shrunk to a few steps. Timestamps come from three places:

* Tune: the trial's start (`run_metadata.start_time` in `experiment_state-*.json`, set when
  Tune marks the trial RUNNING) and `time_total_s` / `elapsed_s` in `result.json`;
* probes (`bench/probes/sitecustomize.py`, put on the workers' PYTHONPATH): the trial
  function's entry, `_load_inputs`, `run_trial`, the evaluator's construction, the first
  `train_step` and the first `report`;
* this driver: the `Tuner.fit()` call (right after the pretrained model is scored).

Times are given from the `fit()` call: Tune marks a trial RUNNING only once its actor is up,
so its own start time hides the actor's start-up. Every search gets a fresh local Ray cluster,
as `raygan tune` does, and one- and two-worker searches alternate, so both see the same load.
(A second 2-worker search on the same cluster can hang: see bench/README.md.)

After each round of searches, the same kind of fresh cluster starts a bare 1-CPU actor that only
imports torch and ray.tune, as every trial process must, and then another that also takes one
step of a 1-parameter torch Adam, which imports torch._dynamo: the floors under `first_step_s`.

    python bench/trial_overhead.py                 # 2 repeats of each kind
    python bench/trial_overhead.py --repeats 5 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from common import print_table, write_results
from ray import tune

import raygan.summary
from raygan.config import SearchConfig, load_config
from raygan.search import run_search

ROOT = Path(__file__).resolve().parents[1]
PROBES_DIR = Path(__file__).resolve().parent / "probes"
SPACES = {1: ROOT / "search_spaces" / "demo.yaml", 2: ROOT / "search_spaces" / "demo-ddp.yaml"}
TARGET_ONE_WORKER_S = 3.0
# The searches call fit() 20-35 s after ray.init (`before_fit_s`), once Ray's prestarted
# workers are up; the floor is timed on a cluster as settled.
FLOOR_SETTLE_S = 20.0


def tiny_search(
    workers: int, name: str, storage: Path, args: argparse.Namespace, *extra: str
) -> SearchConfig:
    """The shipped demo space for `workers`, cut to one short trial (demo evaluation settings)."""
    overrides = [
        f"name={name}",
        f"storage={storage}",
        "num_trials=1",
        f"trial.steps={args.steps}",
        f"trial.eval_every={args.eval_every}",
        f"trial.eval_samples={args.eval_samples}",
        *extra,
    ]
    return load_config(SearchConfig, SPACES[workers], overrides)


@contextlib.contextmanager
def actor_reuse(reuse: bool | None) -> Iterator[None]:
    """What-if for the sequence mode: `run_search`'s Tuner with `reuse_actors=reuse`, whatever
    `build_tuner` passes (None: as it passes)."""
    original = tune.TuneConfig

    def with_reuse(*args: Any, **kwargs: Any) -> tune.TuneConfig:
        return original(*args, **{**kwargs, "reuse_actors": reuse})

    if reuse is not None:
        tune.TuneConfig = with_reuse
    try:
        yield
    finally:
        tune.TuneConfig = original


@contextlib.contextmanager
def fit_start_recorder(marks: dict[str, float]) -> Iterator[None]:
    """Notes when `run_search` is done scoring the pretrained model, i.e. about to `fit()`."""
    original = raygan.summary.score_pretrained

    def probed(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        marks["fit"] = time.time()
        return result

    raygan.summary.score_pretrained = probed
    try:
        yield
    finally:
        raygan.summary.score_pretrained = original


Event = tuple[str, float, int]  # (name, unix time, pid)


def read_probes(file: Path, start: float, end: float) -> list[Event]:
    """Probe events of every process between `start` and `end`."""
    if not file.exists():
        return []
    entries = [json.loads(line) for line in file.read_text().splitlines()]
    return sorted((e["event"], e["t"], e["pid"]) for e in entries if start <= e["t"] <= end)


def times(events: list[Event], name: str) -> list[float]:
    return sorted(t for n, t, _ in events if n == name)


def durations(events: list[Event], name: str) -> list[float]:
    """Per process: first `<name>:end` minus first `<name>:start`."""
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    for n, t, pid in events:
        if n == f"{name}:start":
            starts.setdefault(pid, t)
        elif n == f"{name}:end":
            ends.setdefault(pid, t)
    return [ends[pid] - starts[pid] for pid in starts if pid in ends]


def tune_trial_start(experiment: Path) -> float:
    """When Tune marked the (only) trial RUNNING, from its experiment state."""
    state_file = max(experiment.glob("experiment_state-*.json"), key=os.path.getmtime)
    state = json.loads(state_file.read_text())
    for _, run_metadata in state["trial_data"]:
        start = json.loads(run_metadata).get("start_time")
        if start is not None:
            return float(start)
    raise RuntimeError(f"no started trial in {state_file}")


def first_result(experiment: Path) -> dict[str, Any]:
    result_file = next(experiment.glob("*/result.json"))
    return json.loads(result_file.read_text().splitlines()[0])


def search_on_fresh_cluster(
    cfg: SearchConfig, probes: Path, reuse: bool | None = None
) -> tuple[dict[str, float], list[Event], Path]:
    """Runs `cfg` on a new local Ray cluster; returns time marks, probe events, experiment."""
    start = time.time()
    # address="local": never join another Ray cluster running on this shared machine.
    # As `raygan.search.connect` starts a local cluster (a dashboard only for Ray Train).
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False if cfg.workers == 1 else None,
        log_to_driver=False,
    )
    marks = {"start": start, "call": time.time()}
    try:
        with fit_start_recorder(marks), actor_reuse(reuse):
            outcome = run_search(cfg)
        marks["end"] = time.time()
    finally:
        ray.shutdown()
    return marks, read_probes(probes, marks["fit"], marks["end"]), Path(outcome.experiment)


def measure(
    workers: int, rep: int, storage: Path, probes: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One one-trial search; times in seconds from the `Tuner.fit()` call."""
    cfg = tiny_search(workers, f"overhead-{workers}w-{rep}", storage, args)
    marks, events, experiment = search_on_fresh_cluster(cfg, probes)
    fit = marks["fit"]
    result = first_result(experiment)
    return {
        "workers": workers,
        "rep": rep,
        "ray_init_s": marks["call"] - marks["start"],
        "new_processes": len(times(events, "process:start")),
        "import_raygan_s": max(durations(events, "import_raygan"), default=0.0),
        "tune_running_s": tune_trial_start(experiment) - fit,
        "trial_fn_s": times(events, "trial_function:start")[0] - fit,
        "worker_inputs_s": times(events, "load_inputs:start")[-1] - fit,
        "evaluator_s": max(durations(events, "evaluator_init")),
        # DDP trains once the slowest rank takes its first step; rank 0 reports first.
        "first_step_s": times(events, "train_step:start")[-1] - fit,
        "first_report_s": times(events, "report:start")[0] - fit,
        "step1_s": max(durations(events, "train_step")),
        "tune_time_total_s": result["time_total_s"],
        "elapsed_s": result["elapsed_s"],
        "search_total_s": marks["end"] - marks["call"],
        "before_fit_s": fit - marks["call"],
        "events": [(n, t - fit, pid) for n, t, pid in events],
    }


@ray.remote(num_cpus=1)
class BareTrialProcess:
    """What every one-worker trial process is before raygan runs in it: a fresh 1-CPU actor
    that imports torch and ray.tune (Tune's function trainable wraps the trial function)."""

    def imports(self) -> int:
        import ray.tune  # noqa: F401
        import torch  # noqa: F401

        return os.getpid()

    def first_adam_step(self) -> int:
        """The imports, then one step of a 1-parameter torch Adam: every torch optimizer step
        imports torch._dynamo (`_use_grad_for_differentiable`), so no trial's first step can
        end sooner."""
        import ray.tune  # noqa: F401
        import torch

        weight = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.Adam([weight])
        weight.sum().backward()
        optimizer.step()
        return os.getpid()


def measure_floor(rep: int) -> dict[str, Any]:
    """Seconds from asking a fresh local cluster for such an actor to its imports done, and
    for another fresh actor to one Adam step done: the part of `first_step_s` that no change
    inside raygan can remove."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(FLOOR_SETTLE_S)
        row: dict[str, Any] = {"rep": rep}
        for method, column in (
            ("imports", "bare_actor_imports_s"),
            ("first_adam_step", "bare_actor_adam_step_s"),
        ):
            actor = BareTrialProcess.remote()
            start = time.time()
            ray.get(getattr(actor, method).remote())
            row[column] = time.time() - start
            ray.kill(actor)
            time.sleep(2.0)  # the killed actor's process exits before the next one starts
        return row
    finally:
        ray.shutdown()


def actors_reused(experiment: Path) -> bool:
    """Whether Tune ran this experiment with reuse_actors, from its saved state."""
    state_file = max(experiment.glob("experiment_state-*.json"), key=os.path.getmtime)
    return '_reuse_actors": true' in state_file.read_text().replace("\\", "")


def measure_sequence(
    reuse: bool, rep: int, storage: Path, probes: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One-worker trials one after another (max_concurrent=1): the gap from each trial's last
    report to the next trial's first step is the per-trial overhead inside a search."""
    name = f"sequence-{'reuse' if reuse else 'fresh'}-{rep}"
    cfg = tiny_search(1, name, storage, args, f"num_trials={args.sequence}", "max_concurrent=1")
    marks, events, experiment = search_on_fresh_cluster(cfg, probes, reuse)
    assert actors_reused(experiment) == reuse, "the reuse_actors what-if did not take effect"
    reports = times(events, "report:start")
    first_steps = times(events, "train_step:start")
    gaps = [step - max(r for r in reports if r < step) for step in first_steps[1:]]
    return {
        "reuse_actors": reuse,
        "rep": rep,
        "trials": len(first_steps),
        "first_trial_first_step_s": first_steps[0] - marks["fit"],
        "later_trials_gap_s": statistics.median(gaps) if gaps else math.nan,
        "gaps_s": gaps,
        "search_total_s": marks["end"] - marks["call"],
    }


COLUMNS = [
    "ray_init_s",
    "new_processes",
    "import_raygan_s",
    "tune_running_s",
    "trial_fn_s",
    "worker_inputs_s",
    "evaluator_s",
    "first_step_s",
    "first_report_s",
    "step1_s",
    "tune_time_total_s",
    "elapsed_s",
    "before_fit_s",
    "search_total_s",
]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for workers in sorted({r["workers"] for r in rows}):
        mine = [r for r in rows if r["workers"] == workers]
        summary: dict[str, Any] = {"workers": workers, "n": len(mine)}
        summary.update({k: statistics.median(r[k] for r in mine) for k in COLUMNS})
        if workers == 1:
            summary["target_first_step_s"] = TARGET_ONE_WORKER_S
        out.append(summary)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="searches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument(
        "--sequence",
        type=int,
        default=3,
        help="trials in the one-worker sequence searches (0: skip them)",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="raygan-bench-overhead-"))
    probes = scratch / "probes.jsonl"
    # Inherited by the raylet and so by every worker it starts (prestarted ones included).
    os.environ["RAYGAN_BENCH_PROBES"] = str(probes)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROBES_DIR), os.environ.get("PYTHONPATH")) if p
    )
    rows, floors = [], []
    for rep in range(args.repeats):
        order = args.workers if rep % 2 == 0 else list(reversed(args.workers))
        for workers in order:
            rows.append(measure(workers, rep, scratch / "runs", probes, args))
            print_table([{k: v for k, v in rows[-1].items() if k != "events"}])
        floors.append(measure_floor(rep))
        print_table([floors[-1]])
    sequences = []
    for rep in range(args.repeats if args.sequence > 1 else 0):
        for reuse in (False, True) if rep % 2 == 0 else (True, False):
            sequences.append(measure_sequence(reuse, rep, scratch / "runs", probes, args))
            print_table([sequences[-1]])
    summary = summarise(rows)
    for row in summary:
        for column in ("bare_actor_imports_s", "bare_actor_adam_step_s"):
            row[column] = statistics.median(f[column] for f in floors)
    print("\nseconds from the Tuner.fit() call (medians; ray_init_s is once per search):")
    print_table(summary)
    print(
        f"\n{args.sequence} one-worker trials in sequence: gap from a trial's last report to "
        "the next trial's first step"
    )
    print_table(sequences)
    print(
        "wrote",
        write_results(
            "trial_overhead", vars(args), summary, runs=rows, sequences=sequences, floors=floors
        ),
    )


if __name__ == "__main__":
    main()
