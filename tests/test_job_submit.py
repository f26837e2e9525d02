"""Integration: `ray job submit` runs a search on a running Ray cluster, with the command and
runtime env of the README's "Run on a cluster", against a real head started by `ray start`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raygan.checkpoint import save_checkpoint

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))  # the CLI of the Ray this suite imports
# Typical here (2 cores): ~50 s to build the job's environment, ~60 s of search.
JOB_TIMEOUT_S = 420


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid`: `ray start` and all it spawned, whatever their group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def signal_quietly(kill, target: int, sig: signal.Signals) -> None:
    try:
        kill(target, sig)
    except ProcessLookupError:
        pass


def session_ended(proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reap `ray start` itself
        if not session_pids(proc.pid):
            return True
        time.sleep(0.5)
    return False


def stop_head(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """End the head we started, and only it: SIGTERM to its process group, then SIGKILL to
    whatever of its session is left after `grace_s` (Ray puts each worker in its own group)."""
    signal_quietly(os.killpg, proc.pid, signal.SIGTERM)
    if session_ended(proc, grace_s):
        return
    for pid in session_pids(proc.pid):
        signal_quietly(os.kill, pid, signal.SIGKILL)
    session_ended(proc, grace_s)


@dataclass
class Head:
    dashboard: str  # the Jobs API: what users pass to `ray job ... --address`
    env: dict[str, str]  # a client's environment: token auth on, with the cluster's token
    logs: Path  # the session's log folder
    log: Path  # output of `ray start`

    def get(self, path: str) -> dict:
        request = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def ray_head(isolated_cache) -> Iterator[Head]:
    """A one-node, 2-CPU cluster with token auth, its dashboard on 127.0.0.1.

    Token auth is set explicitly, so the test does not depend on whether ~/.ray/auth_token
    exists (with RAY_AUTH_MODE unset, `ray start` turns auth on only when a token does).
    pip gets no index and no config: the job's environment must come from what is installed.
    """
    root = Path(tempfile.mkdtemp(prefix="rgjob-", dir="/tmp"))  # short: Ray's socket paths
    gcs, dash, client, agent, agent_grpc, metrics, env_agent, nm, om = free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PIP_"))}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAYGAN_CACHE=str(isolated_cache),  # inherited by the job's driver and trials
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
    )
    log = root / "head.log"
    # Every port free or OS-chosen: other Ray clusters may run on this machine.
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--num-cpus=2",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={env_agent}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--temp-dir={root / 'ray'}",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own group: we end only it
    try:
        head = Head(f"http://127.0.0.1:{dash}", env, root / "ray" / "session_latest" / "logs", log)
        wait_for_jobs_api(head, proc)
        yield head
    finally:
        stop_head(proc)
        # The job's virtualenv is a copy of .venv (~6 GB, ~60k files; Ray copies the venv
        # it runs from): deleting it takes longer than the search, so let it finish alone.
        subprocess.Popen(["rm", "-rf", str(root)], start_new_session=True)


def wait_for_jobs_api(head: Head, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{head.log.read_text()}")
        try:
            head.get("/api/version")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"the Jobs API did not come up in {timeout_s}s:\n{head.log.read_text()}")


def ray_job(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def runtime_env_setup_log(head: Head) -> str:
    return "".join(p.read_text(errors="replace") for p in head.logs.glob("runtime_env_setup-*.log"))


def write_search(tmp_path: Path, base_dir: Path) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "submitted",
                "data": "demo:target:200",
                "base": str(base_dir),
                "trial": {"steps": 8, "batch_size": 8, "eval_every": 4, "eval_samples": 40},
                "space": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
                "seed_recipe": None,
                "num_trials": 2,
            }
        )
    )
    return path


def test_submitted_search_runs_on_the_cluster_and_exports_the_best_model(
    ray_head, tiny_base, tmp_path
):
    # A client needs RAY_AUTH_MODE=token as well as the token, or it sends none.
    no_mode = {k: v for k, v in ray_head.env.items() if k != "RAY_AUTH_MODE"}
    refused = ray_job(no_mode, "list", "--address", ray_head.dashboard)
    assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr

    search = write_search(tmp_path, save_checkpoint(tiny_base, tmp_path / "base"))
    storage = tmp_path / "experiments"  # node-local: fine on a one-node cluster
    job_id = f"raygan-test-{secrets.token_hex(4)}"
    # The documented command, plus an id to query the job by.
    try:
        submitted = ray_job(
            ray_head.env,
            "submit",
            "--address",
            ray_head.dashboard,
            "--submission-id",
            job_id,
            "--working-dir",
            ".",
            "--runtime-env",
            "cluster/runtime_env.yaml",
            "--",
            "raygan",
            "tune",
            str(search),
            "--storage",
            str(storage),
            timeout=JOB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        logs = ray_job(ray_head.env, "logs", "--address", ray_head.dashboard, job_id)
        pytest.fail(
            f"job still running after {JOB_TIMEOUT_S}s:\n{logs.stdout}\n"
            f"--- runtime env setup ---\n{runtime_env_setup_log(ray_head)[-5000:]}"
        )
    output = submitted.stdout + submitted.stderr  # `ray job submit` follows the job's log
    setup_log = runtime_env_setup_log(ray_head)
    assert submitted.returncode == 0, f"{output}\n--- runtime env setup ---\n{setup_log[-5000:]}"

    job = ray_head.get(f"/api/jobs/{job_id}")
    assert job["status"] == "SUCCEEDED", job
    # `raygan tune` joined this cluster through the RAY_ADDRESS the job sets, rather than
    # starting a cluster of its own: its Ray driver is registered with the job.
    assert job["driver_info"] is not None, job
    # The job's pip virtualenv found raygan's dependencies where Ray runs (pip had no index).
    assert "Requirement already satisfied: torch==" in setup_log, setup_log[-5000:]

    export = storage / "submitted" / "export"
    assert (export / "generator.safetensors").is_file(), output
    assert len(pq.read_table(export / "trials.parquet")) == 2
    assert "Top trials" in output and str(export) in output  # the driver's summary
