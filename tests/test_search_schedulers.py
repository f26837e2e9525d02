"""Integration on a local Ray cluster: PBT restores trials from each other's checkpoints, and a
search whose every trial fails ends in one line naming the first trial's error."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from raygan.checkpoint import save_checkpoint
from raygan.config import SearchConfig, validate
from raygan.errors import SearchFailed
from raygan.metrics import features
from raygan.metrics.features import Classifier
from raygan.search import run_search

pytestmark = pytest.mark.ray

TRIAL = {"steps": 8, "batch_size": 8, "eval_every": 2, "eval_samples": 40}


@pytest.fixture(autouse=True)
def untrained_classifier(monkeypatch):
    """The driver trains the search's evaluation classifier before any trial, which takes
    minutes on a busy 2-core box; trials load the driver's file, so no trial trains one."""
    monkeypatch.setattr(features, "train_classifier", lambda data: Classifier(data.num_classes))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_base):
    return save_checkpoint(tiny_base, tmp_path_factory.mktemp("base") / "ckpt")


def search_config(storage: Path, **overrides) -> SearchConfig:
    raw = {"name": "t", "data": "demo:target:200", "trial": TRIAL, "storage": str(storage)}
    raw.update(overrides)
    return validate(SearchConfig, raw, "test")


def test_pbt_copies_a_better_trial_into_a_worse_one_within_the_space(local_ray, base_dir, tmp_path):
    steps = 24
    cfg = search_config(
        tmp_path / "runs",
        base=str(base_dir),
        space={
            "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
            "beta1": {"type": "uniform", "low": 0.0, "high": 0.9},
        },
        searcher="random",
        scheduler={"kind": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5},
        # Long enough that the trials overlap: PBT compares only trials still running.
        trial={**TRIAL, "steps": steps},
        num_trials=2,
        max_concurrent=2,
    )
    outcome = run_search(cfg)
    experiment = Path(outcome.experiment)
    table = pq.read_table(outcome.export / "trials.parquet").to_pylist()
    assert sorted(r["status"] for r in table) == ["completed", "completed"], table

    exploits = [
        json.loads(line)
        for line in (experiment / "pbt_global.txt").read_text().splitlines()
        if line.strip()
    ]
    assert exploits, "no trial was ever restored from another's checkpoint"
    for _, _, _, _, _, new in exploits:
        assert 1e-5 <= new["lr"] <= 1e-2 and 0.0 <= new["beta1"] <= 0.9
    # A restored trial trains on with its new settings from the copied step.
    for policy in experiment.glob("pbt_policy_*.txt"):
        trial_id = policy.stem.removeprefix("pbt_policy_")
        *_, clone_iteration, _, new = json.loads(policy.read_text().splitlines()[-1])
        [trial_dir] = [p for p in experiment.iterdir() if p.is_dir() and trial_id in p.name]
        reports = [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines()]
        after = [r for r in reports if r["training_iteration"] > clone_iteration]
        # A clone of a finished trial's last checkpoint has nothing left to train: it reports
        # that step again, as completed.
        next_step = min((clone_iteration + 1) * TRIAL["eval_every"], steps)
        assert after and after[0]["step"] == next_step
        assert json.loads((trial_dir / "params.json").read_text())["lr"] == new["lr"]


FAILING_MODEL = """
import torch
from torch import nn


class G(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.embed = nn.Embedding(num_classes, 8)
        self.fc = nn.Linear(16, 3 * 32 * 32)

    def forward(self, z, y):
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("this generator cannot train")
        return torch.tanh(self.fc(torch.cat([z, self.embed(y)], 1))).view(-1, 3, 32, 32)


class D(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.embed = nn.Embedding(num_classes, 3 * 32 * 32)
        self.fc = nn.Linear(3 * 32 * 32, 1)

    def forward(self, x, y):
        x = x.flatten(1)
        return self.fc(x) + (x * self.embed(y)).sum(1, keepdim=True) * 1e-3


def build(num_classes=10):
    return G(num_classes), D(num_classes)
"""


def test_a_search_whose_every_trial_fails_names_the_first_error(local_ray, tiny_data, tmp_path):
    factory = tmp_path / "failing.py"
    factory.write_text(FAILING_MODEL)
    namespace: dict = {}
    exec(FAILING_MODEL, namespace)  # noqa: S102 - the test's own model, to save its weights
    g, d = namespace["build"](tiny_data.num_classes)
    weights = tmp_path / "gan.pt"
    torch.save({"generator": g.state_dict(), "discriminator": d.state_dict()}, weights)
    cfg = search_config(
        tmp_path / "runs",
        base=str(weights),
        model={"adapter": "torch", "factory": f"{factory}:build", "latent_dim": 8},
        space={"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
        num_trials=2,
        max_failures=0,
    )
    with pytest.raises(SearchFailed) as info:
        run_search(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert (
        message == "all 2 trials failed; the first with: RuntimeError: this generator cannot train"
    )
