"""TensorBoard logging of one trial: scalars, a per-class sample grid and its hyperparameters.

Every trial of an experiment writes its own run under one log directory, so
`tensorboard --logdir EXPERIMENT/tensorboard` compares them. The HParams tab lists the
hyperparameters the caller passes (a search passes the ones it searches) against the trial's
best evaluation so far (`best/*`): a last value would rank trials by FID's noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

BEST_KEYS = ("objective", "fid", "collapse", "class_accuracy", "color_fd")
HPARAM_METRICS = tuple(f"best/{key}" for key in BEST_KEYS)


def _hparam_value(value: Any) -> float | int | str | bool:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class TrialLog:
    def __init__(self, logdir: str | Path, hparams: dict[str, Any]) -> None:
        self.writer = SummaryWriter(str(logdir))
        # Written up front, so a trial stopped early still shows in the HParams dashboard.
        clean = {k: _hparam_value(v) for k, v in hparams.items()}
        for summary in hparams_summary(clean, {tag: math.nan for tag in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        # Since this log opened: a trial retried from a checkpoint starts a new best here.
        self.best: dict[str, Any] | None = None

    def evaluation(self, step: int, metrics: dict[str, Any], grid: torch.Tensor | None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                group = "loss" if key.startswith("loss") else "eval"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        objective = metrics.get("objective", math.inf)
        if math.isfinite(objective) and (self.best is None or objective < self.best["objective"]):
            self.best = metrics
        if self.best is not None:
            for key in BEST_KEYS:
                self.writer.add_scalar(f"best/{key}", self.best.get(key, math.nan), step)
        if grid is not None:
            self.writer.add_image("samples/per_class", grid, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
