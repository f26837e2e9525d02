"""Integration: `ray job submit` runs a search on a running Ray cluster, exactly as
cluster/RUN_ON_A_CLUSTER.md tells users to, against a real head started with `ray start`."""

from __future__ import annotations

import os
import secrets
import shutil
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
JOB_TIMEOUT_S = 300


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
    """Processes in session `sid`: `ray start` and everything it spawned, whatever their group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def stop_head(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """End the head we started and only it: its process group, then any stragglers of its
    session (Ray gives each worker a group of its own), SIGTERM first, SIGKILL after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            for pid in session_pids(proc.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()
            if not session_pids(proc.pid):
                return
            time.sleep(0.5)


@dataclass
class Head:
    dashboard: str  # the Jobs API address users pass to `ray job --address`
    env: dict[str, str]  # a client's environment: token auth on, with the cluster's token
    log: Path


@pytest.fixture
def ray_head(isolated_cache) -> Iterator[Head]:
    """A one-node cluster on 127.0.0.1 with token auth, as `ray start --head --block` makes it.

    Token auth is set explicitly (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) so the test does not
    depend on whether ~/.ray/auth_token happens to exist. pip may not fetch anything
    (no index, no config): the job's environment must come from what is installed."""
    # Short: Ray puts Unix sockets under its temp dir (107-byte path limit).
    root = Path(tempfile.mkdtemp(prefix="rgjob-", dir="/tmp"))
    gcs, dash, client, agent, agent_grpc, metrics, env_agent, nm, om = free_ports(9)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "PIP_")) or k == "RAY_USAGE_STATS_ENABLED"}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAYGAN_CACHE=str(isolated_cache),  # inherited by the job's driver and trials
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
    )
    log = root / "head.log"
    cmd = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={env_agent}", f"--node-manager-port={nm}",
        f"--object-manager-port={om}", "--num-cpus=2", f"--temp-dir={root / 'ray'}",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: we end only it
    try:
        head = Head(f"http://127.0.0.1:{dash}", env, log)
        wait_for_jobs_api(head, proc)
        yield head
    finally:
        stop_head(proc)
        if os.environ.get("KEEP_RGJOB"):
            shutil.copytree(root / "ray" / "session_latest" / "logs", "/tmp/rgjob-keep-logs", dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)  # includes the job's virtualenv


def wait_for_jobs_api(head: Head, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{head.log.read_text()}")
        request = urllib.request.Request(
            f"{head.dashboard}/api/version",
            headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"the Jobs API did not come up in {timeout_s}s:\n{head.log.read_text()}")


def ray_job(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", *args], cwd=REPO, env=head.env, capture_output=True, text=True,
        timeout=timeout,
    )


def write_search(tmp_path: Path, base_dir: Path) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "name": "submitted",
        "data": "demo:target:200",
        "base": str(base_dir),
        "trial": {"steps": 8, "batch_size": 8, "eval_every": 4, "eval_samples": 40},
        "space": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
        "seed_recipe": None,
        "num_trials": 2,
    }))
    return path


def test_submitted_job_runs_the_search_on_the_cluster_and_exports_the_best_model(
    ray_head, tiny_base, tmp_path
):
    # Token auth is on: the Jobs API refuses a client without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_head.dashboard}/api/version", timeout=5)
    assert refused.value.code == 401

    base = save_checkpoint(tiny_base, tmp_path / "base")
    search = write_search(tmp_path, base)
    storage = tmp_path / "experiments"
    job_id = f"raygan-test-{secrets.token_hex(4)}"

    start = time.monotonic()
    submitted = ray_job(
        ray_head, "submit", "--address", ray_head.dashboard, "--submission-id", job_id,
        "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
        "raygan", "tune", str(search), "--storage", str(storage),
        timeout=JOB_TIMEOUT_S,
    )
    print(f"job ran {time.monotonic() - start:.0f}s", file=sys.stderr)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output

    status = ray_job(ray_head, "status", "--address", ray_head.dashboard, job_id)
    assert "SUCCEEDED" in status.stdout + status.stderr, status.stdout + status.stderr

    export = storage / "submitted" / "export"
    assert (export / "generator.safetensors").is_file(), output
    trials = pq.read_table(export / "trials.parquet").to_pylist()
    assert len(trials) == 2
    assert "Top trials" in output  # the driver's summary, streamed back by `ray job submit`
