"""Integration: a real local Ray cluster runs real Optuna + ASHA searches of real trials."""

import json
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raygan.checkpoint import load_checkpoint, save_checkpoint
from raygan.config import SearchConfig, validate
from raygan.errors import ConfigError
from raygan.export import sample_to_file
from raygan.search import check_resources, run_search

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_base):
    return save_checkpoint(tiny_base, tmp_path_factory.mktemp("base") / "ckpt")


def search_config(base_dir, storage, **overrides) -> SearchConfig:
    raw = {
        "name": "t",
        "data": "demo:target:200",
        "base": str(base_dir),
        "trial": {"steps": 8, "batch_size": 8, "eval_every": 2, "eval_samples": 40},
        "space": {
            "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
            "beta1": {"type": "uniform", "low": 0.0, "high": 0.9},
            "freeze_d": {"type": "int", "low": 0, "high": 2},
        },
        "num_trials": 3,
        "storage": str(storage),
        "scheduler": {"grace_evals": 1, "reduction_factor": 2},
    }
    raw.update(overrides)
    return validate(SearchConfig, raw, "test")


def test_search_runs_trials_exports_best_and_logs_every_trial(local_ray, base_dir, tmp_path):
    cfg = search_config(base_dir, tmp_path / "runs")
    outcome = run_search(cfg)
    experiment = Path(outcome.experiment)

    # Export folder: weights, config, samples, serving model, trials table, card.
    export = outcome.export
    for name in (
        "generator.safetensors",
        "discriminator.safetensors",
        "raygan.json",
        "samples.png",
        "generator.pt2",
        "trials.parquet",
        "best.json",
        "MODEL_CARD.md",
    ):
        assert (export / name).exists(), name
    best = json.loads((export / "best.json").read_text())
    model = load_checkpoint(export).build().train(False)
    served = torch.export.load(str(export / "generator.pt2")).module()
    z, y = torch.randn(5, 128), torch.arange(5)
    assert torch.allclose(served(z, y), model.generate(z, y), atol=1e-6)

    table = pq.read_table(export / "trials.parquet").to_pylist()
    assert len(table) == 3
    assert {
        "param_lr",
        "param_beta1",
        "param_freeze_d",
        "status",
        "stop_reason",
        "best_fid",
        "last_fid",
        "best_collapse",
    } <= set(table[0])
    seed = [r for r in table if r["param_lr"] == pytest.approx(2e-4) and r["param_freeze_d"] == 0]
    assert len(seed) == 1, "the seed recipe was not evaluated"
    # The best checkpoints by the search were re-scored on fresh noise; the best re-score won.
    rescored = best["rescore"]["candidates"]
    assert rescored[0]["objective"] == pytest.approx(min(r["best_objective"] for r in table))
    assert best["rescored_objective"] == min(c["rescored_objective"] for c in rescored)

    # TensorBoard: every trial has scalars, sample grids and hparams.
    runs = sorted(p for p in (experiment / "tensorboard").iterdir() if p.is_dir())
    assert len(runs) == 3
    for run in runs:
        acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        assert {
            "eval/fid",
            "eval/collapse",
            "eval/precision",
            "eval/recall",
            "eval/density",
            "eval/coverage",
            "eval/class_accuracy",
            "eval/color_fd",
            "loss/loss_d",
            "loss/loss_g",
        } <= set(acc.Tags()["scalars"])
        assert "samples/per_class" in acc.Tags()["images"]
        assert acc.PluginTagToContent("hparams"), f"{run.name} has no hparams"

    assert "Top trials" in outcome.summary and str(export) in outcome.summary
    png = sample_to_file(export, "circle", 4, tmp_path / "x.png")
    assert png.stat().st_size > 0


def test_ddp_trial_runs_on_ray_train_with_two_workers(local_ray, base_dir, tmp_path):
    cfg = search_config(
        base_dir,
        tmp_path / "runs",
        num_trials=1,
        workers=2,
        name="ddp",
        trial={"steps": 4, "batch_size": 8, "eval_every": 2, "eval_samples": 40},
    )
    outcome = run_search(cfg)
    table = pq.read_table(outcome.export / "trials.parquet").to_pylist()
    assert [r["status"] for r in table] == ["completed"]
    assert table[0]["evaluations"] == 2
    # The checkpoint came from the Ray Train run of that trial.
    assert "/train/" in json.loads((outcome.export / "best.json").read_text())["source_checkpoint"]
    runs = list((Path(outcome.experiment) / "tensorboard").iterdir())
    assert len(runs) == 1


@contextmanager
def time_limit(seconds: int):
    """A hang fails the test instead of stalling the suite."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def live_placement_groups() -> list[str]:
    from ray.util import placement_group_table

    return [pg for pg, info in placement_group_table().items() if info["state"] != "REMOVED"]


def test_ddp_trial_stopped_by_asha_frees_its_workers_for_the_next_trials(
    local_ray, base_dir, tmp_path
):
    # Each 2-worker trial takes both CPUs, so a trial that ran after the stopped one proves
    # the stopped trial's workers and placement group were released.
    cfg = search_config(
        base_dir,
        tmp_path / "runs",
        name="asha-ddp",
        workers=2,
        max_concurrent=1,
        num_trials=3,
        searcher="random",
        # The seed point leaves the untrained base as it is; the others (lr 5e-2) wreck it
        # within two steps, so ASHA stops them at the first rung.
        seed_recipe={"lr": 1e-8},
        space={"lr": {"type": "choice", "values": [1e-8, 5e-2]}},
        trial={"steps": 6, "batch_size": 8, "eval_every": 2, "eval_samples": 40},
    )
    with time_limit(900):
        outcome = run_search(cfg)
    table = sorted(
        pq.read_table(outcome.export / "trials.parquet").to_pylist(), key=lambda r: r["trial_id"]
    )
    statuses = [r["status"] for r in table]
    assert len(table) == 3 and "running" not in statuses, table
    assert [r["param_lr"] for r in table] == [1e-8, 5e-2, 5e-2], "the searcher drew other points"
    assert statuses == ["completed", "stopped", "stopped"], table
    deadline = time.monotonic() + 60
    while live_placement_groups() and time.monotonic() < deadline:
        time.sleep(1)
    assert not live_placement_groups()


def test_more_gpus_than_the_cluster_has_fails_before_any_trial(local_ray, base_dir, tmp_path):
    cfg = search_config(base_dir, tmp_path / "runs", gpus_per_worker=1, workers=2)
    with pytest.raises(ConfigError, match=r"a trial needs 2 GPUs .* the cluster has 0"):
        run_search(cfg)
    assert not (tmp_path / "runs" / "t").exists()


def test_a_joined_cluster_short_of_gpus_is_left_to_its_autoscaler(
    local_ray, base_dir, tmp_path, caplog
):
    cfg = search_config(base_dir, tmp_path / "runs", gpus_per_worker=1, workers=2, max_concurrent=2)
    assert check_resources(cfg, may_grow=True) == 2
    assert "a trial needs 2 GPUs" in caplog.text and "autoscaler" in caplog.text


def test_freeze_deeper_than_the_base_model_fails_before_any_trial(base_dir, tmp_path):
    cfg = search_config(
        base_dir, tmp_path / "runs", space={"freeze_d": {"type": "int", "low": 0, "high": 9}}
    )
    with pytest.raises(
        ConfigError, match="freeze_d reaches 9 but the discriminator of .* has 4 freezable groups"
    ):
        run_search(cfg)


def test_class_count_mismatch_fails_before_any_trial(base_dir, tmp_path):
    from raygan.errors import CheckpointError

    folder = tmp_path / "data"
    from PIL import Image

    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(folder / name / f"{i}.png")
    cfg = search_config(base_dir, tmp_path / "runs", data=str(folder))
    with pytest.raises(
        CheckpointError, match="base model has 10 classes .* data set has 2 .* set model.class_map"
    ):
        run_search(cfg)
