"""Fault tolerance, end to end through the CLI: a killed trial or DDP worker resumes from its
checkpoint, a crash between writing a checkpoint and reporting it loses and repeats nothing, and
an interrupted search continues with --resume without rerunning finished trials."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raygan.checkpoint import save_checkpoint

pytestmark = pytest.mark.ray


def write_search(tmp_path, base_dir, trial=None, **overrides) -> Path:
    """A one-trial search YAML; `trial` overrides fields of its small trial settings."""
    raw = {
        "name": "rec",
        "data": "demo:target:200",
        "base": str(base_dir),
        "trial": {
            "steps": 40,
            "batch_size": 8,
            "eval_every": 4,
            "eval_samples": 40,
            **(trial or {}),
        },
        "space": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
        "num_trials": 1,
        "max_concurrent": 1,
        "storage": str(tmp_path / "runs"),
    }
    raw.update(overrides)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_search(args, cache, **env_vars) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYGAN_CACHE"] = str(cache)  # a fresh local cluster of its own
    env.update(env_vars)
    return subprocess.Popen(
        [sys.executable, "-m", "raygan", "tune", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: we end only what we started
    )


def wait_for(predicate, timeout: float, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"search exited early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("timed out")


def ray_processes(session_pid: int, title: str) -> list[int]:
    """PIDs of the search's Ray actors whose process title (set by Ray) starts with `title`:
    "ray::ImplicitFunc" for Tune function trials, "ray::RayTrainWorker" for DDP workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="ignore")
            sid = os.getsid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if cmdline.startswith(title) and sid == os.getsid(session_pid):
            pids.append(int(entry.name))
    return pids


def reported_steps(experiment: Path) -> list[list[dict]]:
    """Each started trial's reports, in order (a trial that has not reported yet is left out)."""
    rows = []
    for result in sorted(experiment.glob("*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if reports:
            rows.append(reports)
    return rows


@pytest.fixture
def base_dir(tmp_path, tiny_base):
    return save_checkpoint(tiny_base, tmp_path / "base")


def test_killed_trial_resumes_from_its_last_checkpoint(tmp_path, base_dir, isolated_cache):
    proc = start_search([write_search(tmp_path, base_dir)], isolated_cache)
    experiment = tmp_path / "runs" / "rec"
    wait_for(lambda: list(experiment.glob("*/checkpoint_000001")), 240, proc)
    victims = wait_for(lambda: ray_processes(proc.pid, "ray::ImplicitFunc"), 30, proc)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output

    (reports,) = reported_steps(experiment)
    steps = [r["step"] for r in reports]
    restarts = [r for r in reports if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, f"expected one restart, got steps {steps}"
    resumed_at = restarts[1]["step"]
    assert resumed_at > 4, f"the trial restarted from scratch: {steps}"
    assert steps[-1] == 40
    table = pq.read_table(experiment / "export" / "trials.parquet").to_pylist()
    assert table[0]["status"] == "completed" and table[0]["restarts"] == 1


def evaluated_steps(reports: list[dict]) -> list[int]:
    return [r["step"] for r in reports if "objective" in r]


def test_killed_ddp_worker_is_restarted_from_the_last_checkpoint(
    tmp_path, base_dir, isolated_cache
):
    search = write_search(
        tmp_path,
        base_dir,
        workers=2,
        trial={"steps": 12, "eval_every": 2},
    )
    proc = start_search([search], isolated_cache)
    experiment = tmp_path / "runs" / "rec"
    wait_for(lambda: len(list(experiment.glob("train/*/checkpoint_*"))) >= 2, 300, proc)
    workers = wait_for(lambda: ray_processes(proc.pid, "ray::RayTrainWorker"), 30, proc)
    os.kill(workers[-1], signal.SIGKILL)
    replaced = wait_for(
        lambda: set(ray_processes(proc.pid, "ray::RayTrainWorker")) - set(workers), 120, proc
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert replaced

    (reports,) = reported_steps(experiment)
    # Every evaluation reported once: the restart resumed after the last checkpoint.
    assert evaluated_steps(reports) == list(range(2, 13, 2)), output
    table = pq.read_table(experiment / "export" / "trials.parquet").to_pylist()
    assert table[0]["status"] == "completed"


def test_crash_between_checkpoint_and_report_loses_and_repeats_nothing(
    tmp_path, base_dir, isolated_cache
):
    search = write_search(
        tmp_path,
        base_dir,
        keep_checkpoints=10,
        trial={"steps": 8, "eval_every": 2},
    )
    proc = start_search([search], isolated_cache, RAYGAN_FAULT_BEFORE_REPORT="4")
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    experiment = tmp_path / "runs" / "rec"
    assert (experiment / "fault-injected-at-4").exists(), "the fault never fired"

    (reports,) = reported_steps(experiment)
    assert evaluated_steps(reports) == [2, 4, 6, 8]
    restarts = [r["step"] for r in reports if r["iterations_since_restore"] == 1]
    assert restarts == [2, 4], f"expected a restart at step 4, got {restarts}"
    (trial_dir,) = [p.parent for p in experiment.glob("*/result.json")]
    stored = sorted(
        json.loads((c / "raygan.json").read_text())["state"]["step"]
        for c in trial_dir.glob("checkpoint_*")
    )
    assert stored == [2, 4, 6, 8], "a checkpoint was lost or stored twice"
    table = pq.read_table(experiment / "export" / "trials.parquet").to_pylist()
    assert table[0]["status"] == "completed" and table[0]["restarts"] == 1


def test_interrupted_search_resumes_without_rerunning_finished_trials(
    tmp_path, base_dir, isolated_cache
):
    search = write_search(
        tmp_path,
        base_dir,
        num_trials=3,
        trial={"steps": 12},
    )
    experiment = tmp_path / "runs" / "rec"
    proc = start_search([search], isolated_cache)

    def first_trial_finished():
        return [r for r in reported_steps(experiment) if r and r[-1]["step"] == 12]

    wait_for(first_trial_finished, 240, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user would
    proc.communicate(timeout=120)
    finished = {r[0]["trial_id"]: len(r) for r in reported_steps(experiment) if r[-1]["step"] == 12}
    assert finished

    # The export's settings may change on resume, and the export follows them.
    resume = [search, "--resume", experiment, "--set", "min_class_accuracy=1"]
    proc = start_search(resume, isolated_cache)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    runs = reported_steps(experiment)
    for trial_id, count in finished.items():
        (rows,) = [r for r in runs if r[0]["trial_id"] == trial_id]
        assert len(rows) == count, f"finished trial {trial_id} was run again"
    table = pq.read_table(experiment / "export" / "trials.parquet").to_pylist()
    assert len(table) == 3, output
    # Every trial reached its end: the full schedule, or a stop by ASHA.
    assert all(r["status"] in ("completed", "stopped") for r in table), table
    best = json.loads((experiment / "export" / "best.json").read_text())
    assert best["class_floor"]["min_class_accuracy"] == 1
