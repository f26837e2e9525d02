"""Export re-scores the best few checkpoints on fresh noise instead of trusting the minimum
over many noisy evaluations."""

import dataclasses
import json

import pytest
import torch

from raygan import export
from raygan.checkpoint import save_checkpoint
from raygan.config import SearchConfig, validate
from raygan.experiment import SETTINGS_FILE, load_settings, save_settings
from raygan.export import export_best
from raygan.metrics import features
from raygan.metrics.features import Classifier

CLASS_ACCURACY = {"lucky": 0.4, "b": 0.2, "c": 0.8, "d": 0.5}


def checkpoint_with(base, run_id: str, objective: float, generator=None):
    metrics = {"objective": objective, "fid": objective, "collapse": 0.0}
    state = {
        "step": 2,
        "run_id": run_id,
        "hparams": {"lr": 1e-4},
        "metrics": {**metrics, "class_accuracy": CLASS_ACCURACY[run_id]},
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
    assert "- Hyperparameters: lr=0.0001\n" in card


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


def test_a_class_floor_skips_better_objectives_below_it(experiment, tmp_path):
    out = export_best(experiment, tmp_path / "export", rescore_top=0, min_class_accuracy=0.7)
    best = json.loads((out / "best.json").read_text())
    assert best["trial_id"] == "c"  # lucky (0.4) and b (0.2) are below the floor
    assert best["class_floor"] == {
        "min_class_accuracy": 0.7,
        "class_accuracy": 0.8,
        "measured": "in the search",
        "met": True,
    }
    assert (
        "Class accuracy floor 0.7: met (0.800 in the search)" in (out / "MODEL_CARD.md").read_text()
    )


def test_a_missed_floor_still_exports_the_best_objective_and_says_so(experiment, tmp_path, caplog):
    out = export_best(experiment, tmp_path / "export", rescore_top=0, min_class_accuracy=0.9)
    best = json.loads((out / "best.json").read_text())
    assert best["trial_id"] == "lucky" and best["class_floor"]["met"] is False
    assert (
        "no checkpoint reaches min_class_accuracy 0.9 in the search (the best reached 0.800)"
        in caplog.text
    )
    assert "Class accuracy floor 0.9: missed" in (out / "MODEL_CARD.md").read_text()


def test_the_floor_comes_from_the_search_settings_unless_export_overrides_it(experiment, tmp_path):
    cfg = load_settings(experiment)
    save_settings(experiment, cfg.model_copy(update={"min_class_accuracy": 0.7, "rescore_top": 0}))
    out = export_best(experiment, tmp_path / "export")
    assert json.loads((out / "best.json").read_text())["trial_id"] == "c"
    out = export_best(experiment, tmp_path / "export", min_class_accuracy=0.0)  # 0: no floor
    best = json.loads((out / "best.json").read_text())
    assert best["trial_id"] == "lucky" and best["class_floor"] is None


def test_the_floor_is_checked_again_on_the_fresh_samples(experiment, tmp_path, monkeypatch):
    """c and d reach 0.45 in the search; on fresh samples c falls below it, so d is exported
    although c re-scores better."""
    fresh = {"c": (1.0, 0.3), "d": (5.0, 0.6)}  # run id: (re-scored objective, class accuracy)

    def rescore(candidates, cfg, experiment):
        return [
            {
                "trial_id": state["run_id"],
                "source_checkpoint": str(source),
                "rescored_objective": fresh[state["run_id"]][0],
                "rescored_class_accuracy": fresh[state["run_id"]][1],
            }
            for _, source, state in candidates
        ]

    monkeypatch.setattr(export, "rescore", rescore)
    out = export_best(experiment, tmp_path / "export", min_class_accuracy=0.45)
    best = json.loads((out / "best.json").read_text())
    assert [c["trial_id"] for c in best["rescore"]["candidates"]] == ["c", "d"]
    assert best["trial_id"] == "d"
    assert best["class_floor"]["measured"] == "on fresh samples"
    assert best["class_floor"]["class_accuracy"] == 0.6 and best["class_floor"]["met"]


def test_a_float32_class_accuracy_at_the_floor_reaches_it_and_a_missing_one_does_not():
    at_floor = float(torch.tensor(350 / 500, dtype=torch.float32))
    assert at_floor < 0.7 and export.reaches(at_floor, 0.7)
    assert not export.reaches(export.class_accuracy_of({"metrics": {}}), 0.1)
