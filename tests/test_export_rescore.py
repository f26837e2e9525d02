"""Export re-scores the best few checkpoints on fresh noise instead of trusting the minimum
over many noisy evaluations."""

import dataclasses
import json

import pytest
import torch

from raygan.checkpoint import save_checkpoint
from raygan.config import SearchConfig, validate
from raygan.experiment import SETTINGS_FILE, save_settings
from raygan.export import export_best
from raygan.metrics import features
from raygan.metrics.features import Classifier


def checkpoint_with(base, run_id: str, objective: float, generator=None):
    state = {
        "step": 2,
        "run_id": run_id,
        "hparams": {"lr": 1e-4},
        "metrics": {"objective": objective, "fid": objective, "collapse": 0.0},
    }
    return dataclasses.replace(base, generator=generator or base.generator, state=state)


@pytest.fixture(autouse=True)
def untrained_classifier(monkeypatch):
    """Training the evaluation classifier takes minutes on a busy 2-core box, and any fixed
    feature space can tell a flat image from varied ones."""
    monkeypatch.setattr(features, "train_classifier", lambda data: Classifier(data.num_classes))


@pytest.fixture
def experiment(tmp_path, tiny_base):
    """Four evaluated checkpoints; the one with the best search objective is a generator that
    draws one flat image: its score was luck."""
    root = tmp_path
    base_dir = save_checkpoint(tiny_base, root / "base")
    exp = root / "exp"
    flat = {name: torch.zeros_like(t) for name, t in tiny_base.generator.items()}
    for run_id, objective, generator in (
        ("lucky", 1.0, flat),
        ("b", 5.0, None),
        ("c", 6.0, None),
        ("d", 7.0, flat),  # beyond the re-scored three
    ):
        ckpt = checkpoint_with(tiny_base, run_id, objective, generator)
        save_checkpoint(ckpt, exp / f"trial_{run_id}" / "checkpoint_000000")
    cfg: SearchConfig = validate(
        SearchConfig,
        {
            "data": "demo:target:200",
            "base": str(base_dir),
            "trial": {"steps": 2, "batch_size": 8, "eval_every": 2, "eval_samples": 40},
            "space": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
        },
        "test",
    )
    save_settings(exp, cfg)
    return exp


def test_export_picks_the_best_rescored_of_the_top_three_and_reports_both_scores(
    experiment, tmp_path
):
    out = export_best(experiment, tmp_path / "export")
    best = json.loads((out / "best.json").read_text())
    candidates = best["rescore"]["candidates"]
    assert [c["trial_id"] for c in candidates] == ["lucky", "b", "c"]
    assert best["trial_id"] != "lucky", "the flat generator's lucky score was trusted"
    assert best["rescored_objective"] == min(c["rescored_objective"] for c in candidates)
    chosen = next(c for c in candidates if c["trial_id"] == best["trial_id"])
    assert best["objective"] == chosen["objective"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "in the search" in card and "on fresh samples" in card


def test_an_experiment_without_search_settings_exports_the_argmin_with_a_warning(
    experiment, tmp_path, caplog
):
    (experiment / SETTINGS_FILE).unlink()
    out = export_best(experiment, tmp_path / "export")
    best = json.loads((out / "best.json").read_text())
    assert best["trial_id"] == "lucky" and best["rescore"] is None
    assert "without re-scoring" in caplog.text
    assert "not re-scored" in (out / "MODEL_CARD.md").read_text()


def test_rescore_top_zero_turns_rescoring_off(experiment, tmp_path):
    out = export_best(experiment, tmp_path / "export", rescore_top=0)
    assert json.loads((out / "best.json").read_text())["trial_id"] == "lucky"
