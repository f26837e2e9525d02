"""Shared helpers for the benchmarks: machine description, tables, JSON results."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# RAYGAN_BENCH_RESULTS sends the JSON elsewhere, to try a script without touching the recorded
# numbers in bench/results.
RESULTS = Path(
    os.environ.get("RAYGAN_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)
# What else ran on the machine is not something a script can see: say it in RAYGAN_BENCH_NOTE
# (e.g. "a test suite ran alongside"), and it is recorded with the numbers.
DEFAULT_NOTE = (
    os.environ.get("RAYGAN_BENCH_NOTE")
    or "no other work declared (set RAYGAN_BENCH_NOTE to record any); absolute CPU times vary "
    "with load (load_average_at_start): compare ratios measured interleaved within one run."
)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine(note: str = DEFAULT_NOTE) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "note": note,
    }


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def tagged(name: str, tag: str | None) -> str:
    """`name_tag`: a partial or side run writes its own results file, not the recorded one."""
    return f"{name}_{tag}" if tag else name


def write_results(
    name: str,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    path: Path | None = None,
    note: str = DEFAULT_NOTE,
    **extra: Any,
) -> Path:
    """bench/results/<name>.json (or `path`): date, machine, exact command, settings and
    measured rows."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(note),
        "command": command(),
        "settings": settings,
        "rows": rows,
        **extra,
    }
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """A Markdown table, so the output pastes straight into bench/README.md."""
    if not rows:
        print("(no rows)")
        return
    columns = list(columns or rows[0])
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def median_and_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)
