"""Human-readable progress for runs outside Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = [f"step {metrics['step']:>6}"]
    for key in ("loss_d", "loss_g", "fid", "kid", "collapse", "coverage", "class_accuracy"):
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
