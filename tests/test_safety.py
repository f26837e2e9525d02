"""`--resume` refuses experiment directories that other users could have planted pickles in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raygan.errors import ConfigError
from raygan.safety import check_private_dir, check_resumable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def experiment(tmp_path) -> Path:
    """A private experiment directory as Tune leaves it, with a trial that errored once."""
    exp = tmp_path / "demo"
    trial = exp / "trial_0001"
    trial.mkdir(parents=True)
    for file in (exp / "tuner.pkl", exp / "searcher-state-2025.pkl", trial / "error.pkl"):
        file.write_bytes(b"pickle")
    for path in (exp, trial):
        path.chmod(0o755)
    for file in (exp / "tuner.pkl", exp / "searcher-state-2025.pkl", trial / "error.pkl"):
        file.chmod(0o644)
    return exp


def test_a_directory_only_you_can_write_is_accepted(experiment):
    check_private_dir(experiment)
    check_resumable(str(experiment) + "/")


@pytest.mark.parametrize(
    "relative, mode",
    [
        (".", 0o775),  # group members could add or replace tuner.pkl
        (".", 0o1777),  # sticky stops deletion, not planting a missing searcher state
        ("tuner.pkl", 0o666),
        ("searcher-state-2025.pkl", 0o664),
        ("trial_0001/error.pkl", 0o646),  # Tune unpickles a trial's error too
    ],
)
def test_anything_others_can_write_is_refused_with_the_chmod_fix(experiment, relative, mode):
    target = experiment / relative
    target.chmod(mode)
    with pytest.raises(ConfigError) as error:
        check_resumable(str(experiment))
    message = str(error.value)
    assert str(target) in message
    assert f"chmod -R go-w {experiment}" in message
    assert message.startswith("--resume") and "\n" not in message


def test_a_file_owned_by_another_user_is_refused(experiment, monkeypatch):
    if os.geteuid() == 0:
        os.chown(experiment / "tuner.pkl", 4242, -1)
        expected = experiment / "tuner.pkl"
    else:  # cannot give a file away: pretend to be someone else instead
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
        expected = experiment
    with pytest.raises(ConfigError, match="belongs to uid") as error:
        check_resumable(str(experiment))
    assert str(expected) in str(error.value)


def test_a_missing_experiment_is_named(tmp_path):
    with pytest.raises(ConfigError, match="experiment directory not found: .*nope"):
        check_resumable(str(tmp_path / "nope"))


def test_an_experiment_that_tune_never_saved_is_refused_as_nothing_to_resume(experiment):
    (experiment / "tuner.pkl").unlink()
    with pytest.raises(ConfigError, match="holds no search state .*nothing to resume"):
        check_resumable(str(experiment))


def test_object_storage_is_left_to_the_bucket_policy():
    check_resumable("s3://bucket/raygan/demo")


def test_tune_resume_refuses_before_loading_data_or_starting_ray(experiment, monkeypatch, capsys):
    import ray

    import raygan.search
    from raygan.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran before the --resume check")

    monkeypatch.setattr(ray, "init", must_not_run)
    monkeypatch.setattr(raygan.search, "preflight", must_not_run)
    (experiment / "tuner.pkl").chmod(0o666)
    search = str(REPO / "search_spaces" / "demo.yaml")
    assert main(["tune", search, "--resume", str(experiment)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("raygan: error: --resume") and "chmod -R go-w" in line
