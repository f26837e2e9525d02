"""Searcher and scheduler choices, resume checks, failure accounting and the HParams tab,
driven without a Ray cluster (the searchers and schedulers are plain objects)."""

import json
import math

import pytest
import ray
import torch
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pbt import _explore
from ray.tune.search.basic_variant import BasicVariantGenerator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from raygan.checkpoint import save_checkpoint
from raygan.config import SearchConfig, TrialConfig, validate
from raygan.errors import ConfigError, SearchFailed
from raygan.experiment import SETTINGS_FILE, check_resume_settings, save_settings
from raygan.recipe import build_recipe
from raygan.scheduling import build_scheduler
from raygan.search import (
    METRIC,
    build_searcher,
    experiment_exists,
    param_space,
    preflight,
    raise_if_all_failed,
    run_search,
    startup_trials,
    trial_context,
)
from raygan.summary import format_summary
from raygan.tensorboard import TrialLog
from raygan.trial import build_models, make_checkpoint, resume_state

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
    "beta1": {"type": "uniform", "low": 0.0, "high": 0.9},
    "freeze_d": {"type": "int", "low": 0, "high": 3},
}


def config(**overrides) -> SearchConfig:
    raw = {"space": SPACE, "num_trials": 12, "trial": {"steps": 8, "eval_every": 2}}
    raw.update(overrides)
    return validate(SearchConfig, raw, "test")


def drive(cfg: SearchConfig, objective, trials: int) -> list[dict]:
    """Ask the searcher for `trials` points one after another, telling it each score."""
    searcher = build_searcher(cfg, concurrency=1)
    searcher.set_search_properties(None, None, param_space(cfg))
    points = []
    for i in range(trials):
        point = searcher.suggest(f"t{i}")
        points.append(point)
        searcher.on_trial_complete(f"t{i}", {METRIC: objective(point)})
    return points


# Two "data sets": they reward different learning rates and freezing depths.
def target_like(p: dict) -> float:
    return (math.log10(p["lr"]) + 4) ** 2 + (p["freeze_d"] - 3) ** 2 + p["beta1"]


def source_like(p: dict) -> float:
    return (math.log10(p["lr"]) + 2) ** 2 + p["freeze_d"] ** 2 + (0.9 - p["beta1"])


def test_tpe_choices_differ_between_data_sets_once_past_its_random_start():
    cfg = config(searcher="tpe")
    startup = startup_trials(cfg.num_trials)
    assert startup == 3
    on_target = drive(cfg, target_like, cfg.num_trials)
    on_source = drive(cfg, source_like, cfg.num_trials)
    # The seed recipe comes first, then seeded random start-up points: the same on both.
    assert on_target[0] == {"lr": 2e-4, "beta1": 0.5, "freeze_d": 0}
    assert on_target[:startup] == on_source[:startup]
    # Then TPE models what it saw, and the two data sets lead it to different points.
    differing = [a != b for a, b in zip(on_target[startup:], on_source[startup:], strict=True)]
    assert all(differing), differing
    assert on_target == drive(cfg, target_like, cfg.num_trials), "not reproducible by seed"


def test_tpe_moves_toward_each_data_sets_optimum():
    cfg = config(searcher="tpe", num_trials=24)
    late = slice(12, None)
    on_target, on_source = drive(cfg, target_like, 24), drive(cfg, source_like, 24)
    assert sum(p["freeze_d"] for p in on_target[late]) > sum(p["freeze_d"] for p in on_source[late])


def test_gp_the_default_starts_at_the_seed_recipe_then_follows_each_data_set():
    cfg = config()
    assert cfg.searcher == "gp"
    startup = startup_trials(cfg.num_trials)
    on_target = drive(cfg, target_like, cfg.num_trials)
    on_source = drive(cfg, source_like, cfg.num_trials)
    assert on_target[0] == {"lr": 2e-4, "beta1": 0.5, "freeze_d": 0}
    assert on_target[:startup] == on_source[:startup]
    late = slice(startup, None)
    assert sum(p["freeze_d"] for p in on_target[late]) > sum(p["freeze_d"] for p in on_source[late])
    assert sum(p["lr"] for p in on_target[late]) < sum(p["lr"] for p in on_source[late])


def test_grid_visits_every_point_once_and_no_seed_point():
    space = {
        "freeze_d": {"type": "int", "low": 0, "high": 2},
        "augment": {"type": "choice", "values": ["none", "diffaug"]},
    }
    cfg = config(searcher="grid", space=space, num_trials=6)
    points = drive(cfg, lambda p: p["freeze_d"], 6)
    assert sorted((p["freeze_d"], p["augment"]) for p in points) == [
        (d, a) for d in range(3) for a in ("diffaug", "none")
    ]


def test_random_searcher_is_tunes_seeded_generator_with_the_seed_point_first():
    searcher = build_searcher(config(searcher="random", seed=7), concurrency=2)
    assert isinstance(searcher, BasicVariantGenerator)
    assert searcher.max_concurrent == 2
    assert searcher._points_to_evaluate == [{"lr": 2e-4, "beta1": 0.5, "freeze_d": 0}]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"searcher": "grid"}, "space.lr: searcher grid takes `choice` and `int` specs only"),
        (
            {"searcher": "grid", "space": {"freeze_d": SPACE["freeze_d"]}, "num_trials": 5},
            r"num_trials \(5\) exceeds the grid's 4 points",
        ),
        ({"scheduler": {"kind": "pbt"}}, "pbt needs `searcher: random` \\(got gp\\)"),
        (
            {
                "scheduler": {"kind": "pbt"},
                "searcher": "random",
                "space": {"freeze_d": SPACE["freeze_d"]},
            },
            "pbt perturbs uniform/loguniform specs",
        ),
        (
            {"scheduler": {"kind": "pbt"}, "searcher": "random", "workers": 2},
            "pbt needs workers: 1",
        ),
        (
            {
                "scheduler": {"kind": "pbt", "perturbation_interval": 1},
                "searcher": "random",
                "trial": {"steps": 8, "eval_every": 2, "checkpoint_every": 4},
            },
            r"checkpoint_every \(4\) must divide .* \(2 steps\)",
        ),
        ({"scheduler": {"kind": "hyperband"}}, "scheduler.kind"),
    ],
)
def test_impossible_searcher_and_scheduler_pairs_are_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_asha_builds_for_trials_shorter_than_its_grace():
    cfg = config(trial={"steps": 4, "eval_every": 4}, scheduler={"grace_evals": 3})
    assert isinstance(build_scheduler(cfg, param_space(cfg)), ASHAScheduler)


def test_each_scheduler_kind_builds_its_ray_scheduler():
    for overrides, kind in (({}, ASHAScheduler), ({"scheduler": {"kind": "none"}}, FIFOScheduler)):
        cfg = config(**overrides)
        assert isinstance(build_scheduler(cfg, param_space(cfg)), kind)


def test_only_asha_with_ray_train_trials_posts_stops_on_a_board_named_by_the_experiment(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    ddp = config(workers=2)
    board = trial_context(ddp, "runs/demo").stop_board
    assert board and board == trial_context(ddp, str(tmp_path / "runs" / "demo")).stop_board
    assert board != trial_context(ddp, "runs/other").stop_board
    assert trial_context(config(), "runs/demo").stop_board is None  # Tune may kill these
    assert trial_context(config(workers=2, scheduler={"kind": "none"}), "x").stop_board is None


def test_pbt_perturbs_only_continuous_settings_and_stays_in_the_space():
    cfg = config(searcher="random", scheduler={"kind": "pbt", "resample_probability": 0.0})
    pbt = build_scheduler(cfg, param_space(cfg))
    assert isinstance(pbt, PopulationBasedTraining)
    # A new freezing depth would not fit the optimizer state the trial restores.
    assert set(pbt._hyperparam_mutations) == {"lr", "beta1"}
    near_edges = {"lr": 9e-3, "beta1": 0.85, "freeze_d": 2}
    for _ in range(20):
        new, _ = _explore(
            near_edges, pbt._hyperparam_mutations, 0.0, (1.2, 0.8), pbt._custom_explore_fn
        )
        assert 1e-5 <= new["lr"] <= 1e-2 and 0.0 <= new["beta1"] <= 0.9
        assert new["freeze_d"] == 2


def test_resume_with_other_space_or_trial_settings_is_refused_naming_each(tmp_path):
    save_settings(tmp_path, config())
    changed = config(
        space={**SPACE, "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
        trial={"steps": 16, "eval_every": 2},
    )
    with pytest.raises(ConfigError) as info:
        check_resume_settings(tmp_path, changed)
    message = str(info.value)
    assert "space.lr.high: 0.01 -> 0.001" in message and "trial.steps: 8 -> 16" in message
    assert "beta1" not in message
    # Where trials run may change: a resumed search can move to a GPU cluster.
    check_resume_settings(tmp_path, config(gpus_per_worker=1, storage="elsewhere"))


def test_resume_of_an_experiment_without_settings_records_them(tmp_path, caplog):
    check_resume_settings(tmp_path, config())
    assert "cannot be compared" in caplog.text
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["num_trials"] == 12


def test_run_search_refuses_a_changed_resume_before_ray_starts(tmp_path):
    experiment = tmp_path / "exp"
    save_settings(experiment, config())
    (experiment / "tuner.pkl").write_bytes(b"Tune's state")
    with pytest.raises(ConfigError, match="trial.steps: 8 -> 16"):
        run_search(config(trial={"steps": 16, "eval_every": 2}), resume=str(experiment))
    assert not ray.is_initialized()


def test_a_trial_restored_from_another_trials_checkpoint_trains_with_its_own_lr(
    tiny_base, tmp_path
):
    cpu = torch.device("cpu")
    saved_with, restored_with = TrialConfig(lr=1e-3, beta1=0.5), TrialConfig(lr=3e-5, beta1=0.1)
    m = build_models(saved_with, tiny_base, cpu)
    ckpt = make_checkpoint(m, build_recipe(saved_with, m.model), tiny_base.class_names, {})
    path = save_checkpoint(ckpt, tmp_path / "ckpt")
    m = build_models(restored_with, tiny_base, cpu)
    resume_state(m, build_recipe(restored_with, m.model), restored_with, path)
    for opt in (m.opt_g, m.opt_d):
        assert opt.param_groups[0]["lr"] == 3e-5
        assert opt.param_groups[0]["betas"] == (0.1, restored_with.beta2)


class Results:
    """The part of Tune's ResultGrid that the failure check reads."""

    def __init__(self, errors: list, total: int) -> None:
        self.errors, self.num_errors, self.total = errors, len(errors), total

    def __len__(self) -> int:
        return self.total


def test_a_search_whose_trials_all_failed_is_one_line_error_naming_the_first():
    first = RuntimeError("Traceback (most recent call last):\n  File x\nValueError: bad data\n")
    with pytest.raises(
        SearchFailed, match=r"^all 2 trials failed; the first with: ValueError: bad data$"
    ):
        raise_if_all_failed(Results([first, RuntimeError("other")], 2))
    raise_if_all_failed(Results([first], 2))  # one trial worked: the search goes on


def test_summary_counts_failed_trials(tmp_path):
    def row(trial_id, status, objective=None):
        return {
            "trial_id": trial_id,
            "status": status,
            "stop_reason": "ValueError: bad" if status == "error" else "",
            "evaluations": 1,
            "best_objective": objective,
            "best_fid": objective,
            "best_collapse": 0.0,
        }

    rows = [row("a", "completed", 3.0), row("b", "error"), row("c", "error")]
    summary = format_summary(rows, config(), {"fid": 9.0}, tmp_path)
    assert "2 of 3 trials failed" in summary
    assert "trial b: error ValueError: bad" in summary


def test_summary_shows_class_accuracy_and_whether_the_export_met_its_floor(tmp_path):
    row = {
        "trial_id": "a",
        "status": "completed",
        "evaluations": 2,
        "best_objective": 3.0,
        "best_fid": 2.0,
        "best_collapse": 0.5,
        "best_class_accuracy": 0.61,
    }
    best = {"trial_id": "a", "step": 4, "objective": 3.0, "rescored_objective": None}
    floor = {"min_class_accuracy": 0.7, "class_accuracy": 0.61, "met": False}
    (tmp_path / "best.json").write_text(json.dumps({**best, "class_floor": floor}))
    summary = format_summary([row], config(), {"fid": 9.0}, tmp_path)
    assert "| class acc |" in summary and "| 0.61 |" in summary
    assert "class accuracy 0.61 against the floor 0.7, MISSED" in summary


def test_hparams_tab_holds_the_searched_settings_and_the_best_metrics(tmp_path):
    log = TrialLog(tmp_path, {"lr": 1e-4, "freeze_d": 2})
    for step, fid in ((2, 30.0), (4, 10.0), (6, 50.0)):
        log.evaluation(step, {"fid": fid, "collapse": 0.0, "objective": fid, "score": 10.0}, None)
    log.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert {h.name for h in experiment.hparam_infos} == {"lr", "freeze_d"}
    assert {m.name.tag for m in experiment.metric_infos} == {
        "best/objective",
        "best/fid",
        "best/collapse",
        "best/class_accuracy",
        "best/color_fd",
    }
    assert [e.value for e in acc.Scalars("best/fid")] == [30.0, 10.0, 10.0]


def test_an_existing_experiment_is_named_with_what_to_do_whether_or_not_it_started(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(b"Tune's state")
    assert f"pass --resume {tmp_path}" in str(experiment_exists(tmp_path))
    (tmp_path / "tuner.pkl").unlink()
    message = str(experiment_exists(tmp_path))
    assert "no search state" in message and "--resume" not in message


def test_missing_inception_weights_fail_the_preflight_before_ray_starts(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("RAYGAN_CACHE", str(tmp_path))
    cfg = config(
        data="demo:target:200",
        trial={"feature_extractor": "inception", "inception_weights": str(tmp_path / "nope.pt")},
    )
    with pytest.raises(ConfigError, match=r"Inception-v3 FID weights not found .*nope\.pt"):
        preflight(cfg)
    assert not ray.is_initialized()
