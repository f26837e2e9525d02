"""Offline checks of the Ray cluster launcher config, the job runtime_env and the
Dockerfile, using Ray's own validators where Ray has them."""

from __future__ import annotations

import copy
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"
GPU_CLUSTER = REPO / "cluster" / "gpu-cluster.yaml"
DOCKERFILE = REPO / "Dockerfile"
SHARED_PATH = "/mnt/raygan"
WORKING_DIR_VAR = "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"
# EC2 instance families with NVIDIA GPUs.
GPU_INSTANCE_FAMILIES = [
    "g4dn",
    "g5",
    "g6",
    "g6e",
    "gr6",
    "p3",
    "p3dn",
    "p4d",
    "p4de",
    "p5",
    "p5e",
    "p5en",
    "p6",
]

# Paths a job upload must leave behind, and paths it must keep so that the package
# can be pip-installed from the uploaded copy.
NOT_UPLOADED = [
    ".git/HEAD",
    ".venv/bin/python",
    "raygan/__pycache__/model.cpython-311.pyc",
    ".raygan-cache/features/abc.npz",
    "runs/demo/events.out.tfevents.1",
    "results/best/model.safetensors",
    "bench/results/h100.json",
    "data/train.parquet",
    "train.parquet",
]
UPLOADED = [
    "pyproject.toml",
    "raygan/__init__.py",
    "raygan/assets/demo_base.safetensors",
    "search_spaces/demo.yaml",
    "bench/run.py",
]


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def rel(path: Path) -> Path:
    return path.relative_to(REPO)


def pinned_ray_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'"ray(?:\[[^\]]*\])?==([0-9.]+)"', text)
    assert match, "pyproject.toml: no exact `ray[...]==X.Y.Z` pin in [project].dependencies"
    return match.group(1)


# ---------------------------------------------------------------------------
# cluster/runtime_env.yaml


def test_runtime_env_is_accepted_by_ray():
    runtime_env = pytest.importorskip("ray.runtime_env")
    fields = load_yaml(RUNTIME_ENV)
    # Ray treats unknown top-level keys as plugins and only logs a warning at run time.
    unknown = set(fields) - runtime_env.RuntimeEnv.known_fields
    assert not unknown, f"{rel(RUNTIME_ENV)}: fields Ray does not know: {sorted(unknown)}"
    try:
        runtime_env.RuntimeEnv(**fields)
    except (TypeError, ValueError) as error:
        pytest.fail(f"{rel(RUNTIME_ENV)} is not a valid Ray runtime_env: {error}")


def test_runtime_env_installs_raygan_from_the_uploaded_working_dir():
    pip = load_yaml(RUNTIME_ENV).get("pip")
    packages = pip.get("packages", []) if isinstance(pip, dict) else pip or []
    assert WORKING_DIR_VAR in packages, (
        f"{rel(RUNTIME_ENV)}: pip should install {WORKING_DIR_VAR} (the unpacked "
        f"working_dir); got {packages}"
    )


def test_runtime_env_uploads_the_package_but_not_data_caches_or_results(tmp_path: Path):
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    repo = tmp_path / "repo"
    for name in NOT_UPLOADED + UPLOADED:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x")
    excludes = load_yaml(RUNTIME_ENV).get("excludes", [])
    archive = tmp_path / "upload.zip"
    # Ray's own packing step, without .gitignore: the excludes alone must be enough.
    packaging._zip_files(str(repo), excludes, str(archive), include_gitignore=False)
    uploaded = set(zipfile.ZipFile(archive).namelist())
    leaked = [name for name in NOT_UPLOADED if name in uploaded]
    missing = [name for name in UPLOADED if name not in uploaded]
    assert not leaked, f"{rel(RUNTIME_ENV)}: excludes let these into the job upload: {leaked}"
    assert not missing, f"{rel(RUNTIME_ENV)}: excludes drop files the job needs: {missing}"


# ---------------------------------------------------------------------------
# cluster/gpu-cluster.yaml


def test_gpu_cluster_config_passes_ray_launcher_validation():
    util = pytest.importorskip("ray.autoscaler._private.util")
    jsonschema = pytest.importorskip("jsonschema")
    try:
        # What `ray up` does before it talks to AWS: merge defaults, then validate.
        util.validate_config(util.prepare_config(copy.deepcopy(load_yaml(GPU_CLUSTER))))
    except (jsonschema.ValidationError, ValueError, RuntimeError) as error:
        pytest.fail(f"{rel(GPU_CLUSTER)} is rejected by Ray's cluster launcher: {error}")


def is_gpu_node_type(node_type: dict[str, Any]) -> bool:
    instance = node_type.get("node_config", {}).get("InstanceType", "")
    family = instance.split(".")[0]
    return node_type.get("resources", {}).get("GPU", 0) > 0 or family in GPU_INSTANCE_FAMILIES


def test_gpu_cluster_has_a_head_and_an_autoscaling_gpu_worker_type():
    config = load_yaml(GPU_CLUSTER)
    node_types = config.get("available_node_types", {})
    head = config.get("head_node_type")
    assert head in node_types, (
        f"{rel(GPU_CLUSTER)}: head_node_type {head!r} is not in available_node_types"
    )
    gpu_workers = {
        name: spec for name, spec in node_types.items() if name != head and is_gpu_node_type(spec)
    }
    assert gpu_workers, (
        f"{rel(GPU_CLUSTER)}: no worker type in available_node_types has a GPU instance type "
        f"({', '.join(GPU_INSTANCE_FAMILIES)}) or resources.GPU"
    )
    for name, spec in gpu_workers.items():
        low, high = spec.get("min_workers", 0), spec.get("max_workers", config["max_workers"])
        assert high > low, (
            f"{rel(GPU_CLUSTER)}: available_node_types.{name} max_workers {high} must exceed "
            f"min_workers {low} to autoscale"
        )
        assert config["max_workers"] >= high, (
            f"{rel(GPU_CLUSTER)}: global max_workers {config['max_workers']} caps "
            f"available_node_types.{name} below its max_workers {high}"
        )


def test_gpu_cluster_nodes_see_shared_storage_at_the_same_path():
    config = load_yaml(GPU_CLUSTER)
    run_options = config.get("docker", {}).get("run_options", [])
    assert f"-v {SHARED_PATH}:{SHARED_PATH}" in run_options, (
        f"{rel(GPU_CLUSTER)}: docker.run_options should bind-mount {SHARED_PATH} into the "
        f"container on every node; got {run_options}"
    )
    mounts = [
        cmd
        for cmd in config.get("initialization_commands", [])
        if re.search(rf"\bmount\b.*\s{re.escape(SHARED_PATH)}\s*$", cmd)
    ]
    assert mounts, (
        f"{rel(GPU_CLUSTER)}: no initialization_commands entry mounts shared storage at "
        f"{SHARED_PATH} on the host"
    )


def chmod_opens_to_others(command: str) -> bool:
    """True if a `chmod` in the shell command gives write access to everyone."""
    for mode in re.findall(r"\bchmod\s+(?:-\S+\s+)*(\S+)", command):
        if re.fullmatch(r"[0-7]{3,4}", mode):
            if int(mode[-1]) & 2:
                return True
        elif any(re.match(r"[ugo]*[oa][ugo]*[+=].*w|[+=].*w", part) for part in mode.split(",")):
            return True
    return False


def test_shared_storage_is_never_made_world_writable():
    # `raygan tune --resume` unpickles Tune state from the shared experiment directory.
    config = load_yaml(GPU_CLUSTER)
    commands = [cmd for key, value in config.items() if key.endswith("_commands") for cmd in value]
    opened = [cmd for cmd in commands if chmod_opens_to_others(cmd)]
    assert not opened, f"{rel(GPU_CLUSTER)}: these commands make files world-writable: {opened}"


@pytest.mark.parametrize(
    "command, opens",
    [("chmod 777 /x", True), ("sudo chmod -R a+w /x", True), ("chmod 3770 /x", False)],
)
def test_world_writable_check_reads_numeric_and_symbolic_modes(command, opens):
    assert chmod_opens_to_others(command) is opens


def test_gpu_cluster_setup_installs_raygan_from_the_repo():
    config = load_yaml(GPU_CLUSTER)
    repo_mounts = [
        remote for remote, local in config.get("file_mounts", {}).items() if local == "."
    ]
    assert repo_mounts, f"{rel(GPU_CLUSTER)}: file_mounts should copy the repo ('.') to nodes"
    installs = [
        cmd
        for cmd in config.get("setup_commands", [])
        if re.search(rf"pip install .*{re.escape(repo_mounts[0])}", cmd)
    ]
    assert installs, (
        f"{rel(GPU_CLUSTER)}: setup_commands should `pip install {repo_mounts[0]}` "
        "(the file-mounted repo) on every node"
    )


def test_gpu_cluster_enables_token_auth_and_keeps_the_dashboard_private():
    config = load_yaml(GPU_CLUSTER)
    run_options = " ".join(config.get("docker", {}).get("run_options", []))
    assert "RAY_AUTH_MODE=token" in run_options, (
        f"{rel(GPU_CLUSTER)}: docker.run_options should set RAY_AUTH_MODE=token"
    )
    assert "~/.ray/auth_token" in config.get("file_mounts", {}), (
        f"{rel(GPU_CLUSTER)}: file_mounts should copy the token file ~/.ray/auth_token"
    )
    for cmd in config.get("head_start_ray_commands", []):
        assert "--dashboard-host=0.0.0.0" not in cmd, (
            f"{rel(GPU_CLUSTER)}: head_start_ray_commands bind the dashboard to every "
            "interface; keep it on 127.0.0.1 and use `ray dashboard`"
        )


# ---------------------------------------------------------------------------
# Images


def test_images_use_the_ray_version_pinned_in_pyproject():
    pinned = pinned_ray_version()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base, f"{rel(DOCKERFILE)}: no `ARG RAY_IMAGE=` default for the FROM line"
    images = {
        f"{rel(DOCKERFILE)} RAY_IMAGE": base.group(1),
        f"{rel(GPU_CLUSTER)} docker.image": load_yaml(GPU_CLUSTER)["docker"]["image"],
    }
    for where, image in images.items():
        repository, _, tag = image.partition(":")
        assert repository == "rayproject/ray" and tag.startswith(f"{pinned}-"), (
            f"{where} is {image!r}; expected the official rayproject/ray:{pinned}-... image "
            f"to match ray=={pinned} in pyproject.toml"
        )
        assert tag.endswith("-gpu") or re.search(r"-cu\d+$", tag), (
            f"{where} is {image!r}, not a GPU (-gpu or -cuXXX) build"
        )
