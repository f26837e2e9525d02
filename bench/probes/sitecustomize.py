"""Timing probes for bench/trial_overhead.py, loaded into every Ray worker through PYTHONPATH.

Python imports `sitecustomize` at start-up. When RAYGAN_BENCH_PROBES names a file, this module
waits until `raygan.trial` / `raygan.search` are imported (by the trial itself), then wraps a
few of their functions so that each process appends `{"event", "t", "pid"}` lines to that file.
Nothing is imported early, so a worker starts exactly as fast as it would without the probes.
Without the variable it does nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

PROBE_FILE = os.environ.get("RAYGAN_BENCH_PROBES")


def record(event: str) -> None:
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid()})
    with open(PROBE_FILE, "a") as f:  # one short append per line: no interleaving
        f.write(line + "\n")


def timed(event: str, fn: Callable) -> Callable:
    """`fn` that records `<event>:start` and `<event>:end` around every call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record(f"{event}:start")
        try:
            return fn(*args, **kwargs)
        finally:
            record(f"{event}:end")

    return wrapper


# Set by each run_trial call, cleared by its first train_step: only first steps are recorded.
first_step_pending = False


def patch_trial(module: ModuleType) -> None:
    train_step = module.train_step

    @functools.wraps(train_step)
    def train_step_probed(*args: Any, **kwargs: Any) -> Any:
        global first_step_pending
        if not first_step_pending:
            return train_step(*args, **kwargs)
        first_step_pending = False
        return timed("train_step", train_step)(*args, **kwargs)

    module.train_step = train_step_probed
    module.Evaluator = timed("evaluator_init", module.Evaluator)


def patch_search(module: ModuleType) -> None:
    record("import_raygan:end")  # raygan.search imports the rest of raygan and torch
    run_trial = module.run_trial

    @functools.wraps(run_trial)
    def run_trial_probed(
        cfg: Any, base: Any, data: Any, output: Any, *args: Any, **kwargs: Any
    ) -> Any:
        global first_step_pending
        first_step_pending = True
        record("run_trial:start")
        output = dataclasses.replace(output, report=timed("report", output.report))
        return run_trial(cfg, base, data, output, *args, **kwargs)

    module.run_trial = run_trial_probed
    module._load_inputs = timed("load_inputs", module._load_inputs)
    module.run_in_trial_process = timed("trial_function", module.run_in_trial_process)
    module.run_on_torch_trainer = timed("trial_function", module.run_on_torch_trainer)


PATCHES = {"raygan.trial": patch_trial, "raygan.search": patch_search}


class PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the modules in PATCHES the normal way and patches them once they have run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name == "raygan":
            record("import_raygan:start")
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


if PROBE_FILE:
    record("process:start")
    sys.meta_path.insert(0, PatchAfterImport())
