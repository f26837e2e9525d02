"""The experiment directory's record of its search settings.

Written when a search starts; `--resume` compares against it, because `Tuner.restore` keeps the
pickled searcher, scheduler and trial budget and would silently mix two searches; export reads
it to re-score checkpoints with the search's data and evaluation settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from raygan.config import SearchConfig
from raygan.errors import ConfigError
from raygan.fsio import write_json_atomic

log = logging.getLogger(__name__)

SETTINGS_FILE = "search_config.json"
# Where trials run, not what they compute or how the search proceeds: a resumed search may
# move to another cluster.
MAY_CHANGE_ON_RESUME = (
    "name",
    "storage",
    "cpus_per_worker",
    "gpus_per_worker",
    "rescore_top",
    "min_class_accuracy",
)
# The stop reason recorded for a trial ASHA stopped: posted by the scheduler for trials that
# stop themselves, and written by export for those Tune stopped from outside.
STOPPED_BY_ASHA = "by ASHA: score behind its rung"


def save_settings(experiment: Path, cfg: SearchConfig) -> Path:
    experiment.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(experiment / SETTINGS_FILE, cfg.model_dump(mode="json"))


def load_settings(experiment: Path) -> SearchConfig | None:
    """The settings the search started with; None for experiments older than the record."""
    file = experiment / SETTINGS_FILE
    if not file.exists():
        return None
    try:
        return SearchConfig.model_validate(json.loads(file.read_text()))
    except ValueError as e:  # JSONDecodeError and pydantic's ValidationError are ValueErrors
        first = str(e).splitlines()[0]
        raise ConfigError(f"{file}: unreadable search settings ({first})") from None


def check_resume_settings(experiment: Path, cfg: SearchConfig) -> None:
    """Refuse to resume with settings other than the search started with, naming each
    difference; an experiment without a record gets one now, with a warning."""
    stored = load_settings(experiment)
    if stored is None:
        log.warning("%s has no %s: the settings cannot be compared", experiment, SETTINGS_FILE)
        save_settings(experiment, cfg)
        return
    changes = differences(
        stored.model_dump(mode="json"), cfg.model_dump(mode="json"), MAY_CHANGE_ON_RESUME
    )
    if changes:
        raise ConfigError(
            f"--resume {experiment}: the settings differ from the search's "
            f"({'; '.join(changes)}); a resumed search keeps its own, so run the new settings "
            "as a new search (another --name)"
        )


def differences(
    old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """`key.path: old -> new` for every setting that differs, but for top-level `ignore`."""
    before, after = _flatten(old), _flatten(new)
    missing = "(unset)"
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
        for key in sorted(before.keys() | after.keys())
        if key.split(".")[0] not in ignore and before.get(key, missing) != after.get(key, missing)
    ]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
