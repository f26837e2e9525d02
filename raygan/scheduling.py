"""What steers running trials: ASHA, PBT or nothing, and how a Ray Train trial hears a stop.

Tune stops a trial by killing its actor. A Ray Train trial's actor drives a worker group whose
placement group then outlives it (ray-project/ray#54305): on a full cluster the next trial
waits for those CPUs forever. So for Ray Train trials ASHA's stop is posted on a `StopBoard`
instead; the trial reads it right after its report, ends its loop, and Ray Train shuts the
worker group down and frees the placement group as after any finished run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)

from raygan.config import SearchConfig, continuous_names
from raygan.experiment import STOPPED_BY_ASHA

log = logging.getLogger(__name__)

METRIC, CHECKPOINT_METRIC, MODE = "score", "objective", "min"
BOARD_NAMESPACE = "raygan"
# How long a trial waits for the scheduler's word on its latest report before it trains on
# (it then hears a stop at its next report).
DECISION_WAIT_S = 30.0


def build_scheduler(
    cfg: SearchConfig, space: dict[str, Any], stop_board: str | None = None
) -> TrialScheduler:
    """`space`: the Tune parameter space PBT mutates. `stop_board`: the board's name when
    trials run on Ray Train and must stop themselves."""
    sched = cfg.scheduler
    if sched.kind == "asha":
        evaluations = evaluations_per_trial(cfg)
        asha = {
            "metric": METRIC,
            "mode": MODE,
            "time_attr": "training_iteration",  # one iteration = one evaluation
            "max_t": evaluations,
            # Ray refuses a grace past max_t; a trial that short is never stopped either way.
            "grace_period": min(sched.grace_evals, evaluations),
            "reduction_factor": sched.reduction_factor,
            # A trial that reaches its last evaluation ends by itself; stopping it there would
            # kill a Ray Train driver.
            "stop_last_trials": False,
        }
        return PostedStopASHA(stop_board, **asha) if stop_board else ASHAScheduler(**asha)
    if sched.kind == "pbt":
        names = continuous_names(cfg.space)
        return PopulationBasedTraining(
            # PBT continues from a trial's latest weights, so it ranks them by their latest
            # objective; the best so far may be long gone.
            metric=CHECKPOINT_METRIC,
            mode=MODE,
            time_attr="training_iteration",
            perturbation_interval=sched.perturbation_interval,
            hyperparam_mutations={name: space[name] for name in names},
            quantile_fraction=sched.quantile_fraction,
            resample_probability=sched.resample_probability,
            custom_explore_fn=ClampToSpace(
                {name: (cfg.space[name].low, cfg.space[name].high) for name in names}
            ),
        )
    return FIFOScheduler()


def evaluations_per_trial(cfg: SearchConfig) -> int:
    return -(-cfg.trial.steps // cfg.trial.eval_every)


@dataclass(frozen=True)
class ClampToSpace:
    """PBT scales values by 0.8 or 1.2, which can leave the space (beta1 0.9 -> 1.08); bring
    them back to its bounds. A class, not a closure: Tune pickles the scheduler."""

    bounds: dict[str, tuple[float, float]]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high) in self.bounds.items():
            config[name] = min(max(config[name], low), high)
        return config


# ---- stops that a Ray Train trial carries out itself ----------------------------------------


def board_name(experiment_dir: str) -> str:
    """One board per experiment, the same name again on --resume (Tune restores the
    scheduler, which holds the name, from the experiment)."""
    return "raygan-stops-" + hashlib.sha256(experiment_dir.encode()).hexdigest()[:16]


@ray.remote(num_cpus=0)
class StopBoard:
    """ASHA's decisions on Ray Train trials, by trial id: the last step it judged, and the
    stop reason where it said stop."""

    def __init__(self) -> None:
        self.judged: dict[str, int] = {}
        self.stops: dict[str, str] = {}

    def post(self, trial_id: str, step: int, stop_reason: str) -> None:
        self.judged[trial_id] = max(step, self.judged.get(trial_id, -1))
        if stop_reason:
            self.stops[trial_id] = stop_reason

    def decision(self, trial_id: str, step: int) -> str | None:
        """The stop reason, "" to go on, None while the report of `step` is unjudged."""
        if self.judged.get(trial_id, -1) < step:
            return None
        return self.stops.get(trial_id, "")


@contextmanager
def board_open(name: str | None) -> Iterator[None]:
    """The board named `name` (None: no board) exists for the block; a named actor that is
    not detached lives as long as its creator's handle, so the handle is held here."""
    if name is None:
        yield
        return
    board = StopBoard.options(name=name, namespace=BOARD_NAMESPACE, get_if_exists=True).remote()
    try:
        yield
    finally:
        ray.kill(board)


def posted_stop(name: str, trial_id: str, step: int, wait_s: float = DECISION_WAIT_S) -> str:
    """The scheduler's word on this trial's report of `step`: a stop reason or ""."""
    try:
        board = ray.get_actor(name, namespace=BOARD_NAMESPACE)
    except ValueError:  # no board (a Tuner built without `run_search`): Tune stops trials
        return ""
    deadline = time.monotonic() + wait_s
    while True:
        decision = ray.get(board.decision.remote(trial_id, step))
        if decision is not None:
            return decision
        if time.monotonic() > deadline:
            return ""
        time.sleep(0.2)


class PostedStopASHA(ASHAScheduler):
    """ASHA whose stops are posted for the trial to carry out (see the module docstring)."""

    def __init__(self, stop_board: str, **asha: Any) -> None:
        super().__init__(**asha)
        self.stop_board = stop_board

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if "step" not in result:
            return action
        stop = action == TrialScheduler.STOP and result.get("trial_status") == "running"
        try:
            board = ray.get_actor(self.stop_board, namespace=BOARD_NAMESPACE)
        except ValueError:  # an experiment resumed from another path: Tune stops it instead
            log.warning("stop board %s is gone; Tune stops trials itself", self.stop_board)
            return action
        board.post.remote(trial.trial_id, result["step"], STOPPED_BY_ASHA if stop else "")
        return TrialScheduler.CONTINUE if stop else action
