"""The end-of-search summary: top trials, best parameters, export path, and how the best
trial compares with the seed recipe and the pretrained model before fine-tuning."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from raygan.checkpoint import Checkpoint
from raygan.config import SearchConfig
from raygan.data import LabeledImages
from raygan.fsio import write_json_atomic
from raygan.metrics.evaluate import Evaluator, objective

BASELINE_FILE = "pretrained.json"


def score_pretrained(
    cfg: SearchConfig, base: Checkpoint, data: LabeledImages, experiment: Path
) -> dict[str, Any]:
    """FID of the base model before any fine-tuning, scored once per experiment."""
    file = experiment / BASELINE_FILE
    if file.exists():
        return json.loads(file.read_text())
    trial = cfg.trial
    experiment.mkdir(parents=True, exist_ok=True)
    # Trains the search's evaluation classifier into the experiment, before any trial needs it.
    scores = Evaluator(
        data,
        trial.eval_samples,
        trial.feature_extractor,
        trial.inception_weights,
        classifier_dir=experiment,
    )
    metrics = scores.evaluate(base.build()).scalars()
    metrics["objective"] = objective(metrics["fid"], metrics["collapse"])
    write_json_atomic(file, metrics)
    return metrics


def is_seed_trial(row: dict[str, Any], cfg: SearchConfig) -> bool:
    recipe = {k: v for k, v in (cfg.seed_recipe or {}).items() if k in cfg.space}
    return bool(recipe) and all(_close(row.get(f"param_{k}"), v) for k, v in recipe.items())


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def format_summary(
    rows: list[dict[str, Any]],
    cfg: SearchConfig,
    pretrained: dict[str, Any],
    export: Path,
    top: int = 5,
) -> str:
    ranked = sorted(
        (r for r in rows if r.get("best_objective") is not None),
        key=lambda r: r["best_objective"],
    )
    names = list(cfg.space)
    header = ["trial", *names, "status", "evals", "best fid", "collapse", "class acc", "objective"]
    lines = [" | ".join(header)]
    for row in ranked[:top]:
        values = [
            row["trial_id"],
            *(_fmt(row.get(f"param_{n}")) for n in names),
            row["status"],
            str(row["evaluations"]),
            _fmt(row["best_fid"]),
            _fmt(row["best_collapse"]),
            _fmt(row.get("best_class_accuracy")),
            _fmt(row["best_objective"]),
        ]
        lines.append(" | ".join(values))
    out = ["", f"Top trials ({len(ranked)} of {len(rows)} scored):", *lines]
    if ranked:
        best = ranked[0]
        out.append(
            "Best parameters: " + ", ".join(f"{n}={_fmt(best.get(f'param_{n}'))}" for n in names)
        )
        seed = next(
            (r for r in rows if is_seed_trial(r, cfg) and r.get("best_fid") is not None), None
        )
        out.append(
            f"FID: best trial {_fmt(best['best_fid'])} | seed recipe "
            f"{_fmt(seed['best_fid']) if seed else 'n/a'} | pretrained (before fine-tuning) "
            f"{_fmt(pretrained['fid'])}"
        )
    stopped = [r for r in rows if r["status"] not in ("completed",)]
    for row in stopped:
        out.append(f"trial {row['trial_id']}: {row['status']} {row['stop_reason']}".rstrip())
    failed = [r for r in rows if r["status"] == "error"]
    if failed:
        out.append(f"{len(failed)} of {len(rows)} trials failed")
    out.append(f"Exported best model to {export}{export_note(export)}")
    return "\n".join(out)


def export_note(export: Path) -> str:
    """Which checkpoint the export holds and its two scores, from its best.json."""
    try:
        best = json.loads((export / "best.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    note = f": trial {best['trial_id']} step {best['step']}, objective {_fmt(best['objective'])}"
    if best.get("rescored_objective") is not None:
        note += f" in the search, {_fmt(best['rescored_objective'])} on fresh samples"
    floor = best.get("class_floor")
    if floor:
        verdict = "met" if floor["met"] else "MISSED"
        note += (
            f"; class accuracy {_fmt(floor['class_accuracy'])} against the floor "
            f"{_fmt(floor['min_class_accuracy'])}, {verdict}"
        )
    return note


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
