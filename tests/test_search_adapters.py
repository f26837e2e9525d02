"""Integration: a 2-trial search of a user's own model under a real local Ray cluster, for each
user adapter, ends in an export in that adapter's serving format."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tiny_models
import torch
import torch.nn.functional as F
from tiny_models import LATENT, save_keras_base, save_torch_base

from raygan.checkpoint import load_checkpoint
from raygan.config import SearchConfig, validate
from raygan.search import run_search

pytestmark = pytest.mark.ray


def search_config(model: dict, base: Path, storage: Path) -> SearchConfig:
    raw = {
        "name": model["adapter"],
        "data": "demo:target:200",
        "base": str(base),
        "model": model,
        "trial": {"steps": 4, "batch_size": 8, "eval_every": 2, "eval_samples": 40},
        "space": {
            "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
            "freeze_d": {"type": "int", "low": 0, "high": 2},
        },
        "num_trials": 2,
        "storage": str(storage),
    }
    return validate(SearchConfig, raw, "test")


def check_trials(export: Path) -> None:
    statuses = [r["status"] for r in pq.read_table(export / "trials.parquet").to_pylist()]
    assert len(statuses) == 2 and "completed" in statuses  # ASHA may stop the other
    assert set(statuses) <= {"completed", "stopped"}


def test_a_torch_user_model_searches_and_exports_a_torch_program(local_ray, tmp_path):
    # The user's model file lives outside raygan and outside the trial processes' cwd.
    shutil.copy(tiny_models.__file__, tmp_path / "user_model.py")
    model = {"adapter": "torch", "factory": f"{tmp_path}/user_model.py:build", "latent_dim": LATENT}
    base = save_torch_base(tmp_path / "base.pt")
    outcome = run_search(search_config(model, base, tmp_path / "runs"))

    export = outcome.export
    check_trials(export)
    assert (export / "samples.png").exists() and not (export / "generator.keras").exists()
    tuned = load_checkpoint(export).build().train(False)
    served = torch.export.load(str(export / "generator.pt2")).module()
    z, y = torch.randn(5, LATENT), torch.arange(5)
    assert torch.allclose(served(z, y), tuned.generate(z, y), atol=1e-5)


def test_a_keras_model_searches_and_exports_keras_files(local_ray, tmp_path):
    keras = pytest.importorskip("keras")
    base = save_keras_base(tmp_path / "keras-base")
    model = {"adapter": "keras", "latent_dim": LATENT, "labels": "onehot"}
    outcome = run_search(search_config(model, base, tmp_path / "runs"))

    export = outcome.export
    check_trials(export)
    assert not (export / "generator.pt2").exists()
    tuned = load_checkpoint(export).build().train(False)
    z, y = torch.randn(5, LATENT), torch.arange(5)
    onehot = F.one_hot(y, 10).float()
    g = keras.saving.load_model(export / "generator.keras")  # plain Keras, safe mode
    d = keras.saving.load_model(export / "discriminator.keras")
    images = g([z, onehot], training=False)
    assert torch.allclose(images.permute(0, 3, 1, 2), tuned.generate(z, y), atol=1e-5)
    assert torch.allclose(
        d([images, onehot], training=False).flatten(),
        tuned.discriminate(images.permute(0, 3, 1, 2), y),
        atol=1e-5,
    )
    pretrained = keras.saving.load_model(base / "generator.keras")
    assert not torch.allclose(pretrained([z, onehot], training=False), images), "not fine-tuned"
