"""How a trial judges its evaluations: the best-so-far score and collapse stopping."""

import math

import pytest

from raygan.config import TrialConfig
from raygan.metrics.evaluate import objective
from raygan.trial import TrialJudge


def assessed(judge: TrialJudge, fid: float, collapse: float, last_step: bool = False) -> dict:
    metrics = {"fid": fid, "collapse": collapse}
    judge.assess(metrics, last_step)
    return metrics


def test_score_is_the_best_objective_so_far_and_ignores_non_finite_ones():
    judge = TrialJudge(collapse_stop=None, collapse_patience=2)
    scores = [assessed(judge, fid, 0.5)["score"] for fid in (300.0, 100.0, math.nan, 200.0)]
    assert scores == [objective(300.0, 0.5)] + [objective(100.0, 0.5)] * 3


def test_collapse_stops_the_trial_after_patience_evaluations_in_a_row():
    judge = TrialJudge(collapse_stop=0.9, collapse_patience=2)
    reasons = [assessed(judge, 100.0, c)["stop_reason"] for c in (0.95, 0.5, 0.95, 0.97)]
    assert reasons[:3] == ["", "", ""]  # the 0.5 in between resets the count
    assert reasons[3] == "collapse 0.970 > 0.9 for 2 evaluations"


def test_status_says_running_until_the_last_step_unless_collapsed():
    judge = TrialJudge(collapse_stop=0.9, collapse_patience=1)
    assert assessed(judge, 100.0, 0.5)["trial_status"] == "running"
    assert assessed(judge, 100.0, 0.5, last_step=True)["trial_status"] == "completed"
    assert assessed(judge, 100.0, 0.95, last_step=True)["trial_status"] == "collapsed"


@pytest.mark.parametrize("stop", [None, 0.9])
def test_a_resumed_judge_keeps_the_score_and_the_collapse_run(stop):
    cfg = TrialConfig(collapse_stop=stop, collapse_patience=3)
    judge = TrialJudge.resumed(cfg, {"metrics": {"score": 42.0}, "high_collapse": 2})
    assert (judge.best_so_far, judge.high_collapse) == (42.0, 2)
    assert (judge.collapse_stop, judge.collapse_patience) == (stop, 3)
    assert TrialJudge.resumed(cfg, {}).best_so_far == math.inf
