"""Human-readable progress for runs outside Ray."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = [f"step {metrics['step']:>6}"]
    keys = ("loss_d", "loss_g", "fid", "kid", "collapse", "coverage", "class_accuracy", "color_fd")
    for key in keys:
        if key in metrics and metrics[key] == metrics[key]:  # NaN: not measured (step 0 losses)
            parts.append(f"{key} {metrics[key]:.4g}")
    if "elapsed_s" in metrics:
        parts.append(f"{metrics['elapsed_s']:.0f}s")
    return " | ".join(parts)


def print_report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    line = format_metrics(metrics)
    if checkpoint is not None:
        line += f" | saved {checkpoint}"
    print(line, flush=True)


class StepProgress:
    """Between evaluations, a line at most every `every_s` seconds with the step rate and the
    time left: a pretrain evaluates every 500 steps, which is 8 minutes of silence on a CPU.
    The rate is averaged since the first call, evaluations included, so the time left counts
    the evaluations to come once one has run."""

    def __init__(self, total: int, every_s: float = 30.0) -> None:
        self.total = total
        self.every_s = every_s
        self.start: tuple[int, float] | None = None
        self.last_print = 0.0

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start, self.last_print = (step, now), now
            return
        if now - self.last_print < self.every_s or step <= self.start[0]:
            return
        self.last_print = now
        per_step = (now - self.start[1]) / (step - self.start[0])
        rate = f"{per_step:.2f} s/step" if per_step >= 1 else f"{1 / per_step:.1f} steps/s"
        print(
            f"step {step:>6}/{self.total} | loss_d {losses['loss_d']:.4g} | "
            f"loss_g {losses['loss_g']:.4g} | {rate} | "
            f"~{(self.total - step) * per_step / 60:.1f} min left",
            flush=True,
        )
