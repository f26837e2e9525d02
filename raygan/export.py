"""Export: the best checkpoint over every evaluation of every trial, ready to sample from.

    OUT/generator.safetensors, discriminator.safetensors, raygan.json   the checkpoint
    OUT/generator.pt2              G(z, y_onehot) as a torch.export program, for serving
    OUT/samples.png                one row per class
    OUT/trials.parquet             every trial: params, best/last metrics, status, stop reason
    OUT/best.json                  trial, hyperparameters and metrics of the export
    OUT/MODEL_CARD.md

Everything is read from the experiment directory alone, so export works after the search,
on another machine, or on a half-finished experiment.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision.utils import save_image

from raygan.checkpoint import SIDECAR, _replace_dir, load_checkpoint
from raygan.errors import CheckpointError, ConfigError
from raygan.model import Generator, one_hot

TRIAL_COLUMNS = (
    "fid",
    "objective",
    "collapse",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_accuracy",
)


def find_checkpoints(experiment: Path) -> list[tuple[float, Path, dict[str, Any]]]:
    """(objective, checkpoint dir, state) of every evaluated checkpoint in the experiment."""
    found = []
    for sidecar in experiment.rglob(SIDECAR):
        if any(
            part.startswith(".") or part == "export"
            for part in sidecar.relative_to(experiment).parts
        ):
            continue  # temporary writes and earlier exports
        try:
            state = json.loads(sidecar.read_text()).get("state", {})
        except (OSError, json.JSONDecodeError):
            continue
        objective = state.get("metrics", {}).get("objective")
        if isinstance(objective, (int, float)) and math.isfinite(objective):
            found.append((float(objective), sidecar.parent, state))
    return sorted(found, key=lambda item: item[0])


def read_trials(experiment: Path, steps: int | None = None) -> list[dict[str, Any]]:
    """One row per Tune trial, from the result.json files Tune writes."""
    rows = []
    for result_file in sorted(experiment.glob("*/result.json")):
        reports = [
            json.loads(line) for line in result_file.read_text().splitlines() if line.strip()
        ]
        evaluations = [r for r in reports if "objective" in r]
        params_file = result_file.parent / "params.json"
        params = json.loads(params_file.read_text()) if params_file.exists() else {}
        row: dict[str, Any] = {
            "trial_id": reports[0].get("trial_id", "") if reports else "",
            "trial_dir": result_file.parent.name,
        }
        row.update({f"param_{k}": v for k, v in sorted(params.items())})
        row["evaluations"] = len(evaluations)
        row["restarts"] = max(0, sum(r.get("iterations_since_restore") == 1 for r in reports) - 1)
        row["last_step"] = evaluations[-1].get("step") if evaluations else None
        row["status"], row["stop_reason"] = trial_status(result_file.parent, evaluations, steps)
        finite = [r for r in evaluations if math.isfinite(r["objective"])]
        best = min(finite, key=lambda r: r["objective"]) if finite else {}
        last = evaluations[-1] if evaluations else {}
        for key in TRIAL_COLUMNS:
            row[f"best_{key}"] = best.get(key)
            row[f"last_{key}"] = last.get(key)
        row["best_step"] = best.get("step")
        rows.append(row)
    return rows


def trial_status(trial_dir: Path, evaluations: list[dict], steps: int | None) -> tuple[str, str]:
    """The trial's end: its own last word, else an error (a retried trial that then finished
    keeps Tune's error file), else a stop by the scheduler."""
    last = evaluations[-1] if evaluations else {}
    status = last.get("trial_status", "running")
    if status != "running":
        return status, last.get("stop_reason", "")
    if any(trial_dir.glob("error.*")):
        error = trial_dir / "error.txt"
        lines = error.read_text().strip().splitlines() if error.exists() else ["unknown error"]
        return "error", lines[-1][:300]
    if not evaluations:
        return "pending", ""
    if steps is not None and last.get("step", 0) < steps:
        return "stopped", "by ASHA: objective behind its rung"
    return "completed", ""


def write_trials_table(rows: list[dict[str, Any]], out: Path) -> None:
    columns = sorted({k for row in rows for k in row}, key=lambda k: (not k.startswith("trial"), k))
    table = (
        pa.table({c: [_cell(row.get(c)) for row in rows] for c in columns})
        if rows
        else pa.table({})
    )
    pq.write_table(table, out)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def sample_images(generator: Generator, label: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.cfg.latent_dim, generator=gen)
    y = one_hot(torch.full((n,), label), generator.cfg.num_classes)
    with torch.no_grad():
        return generator.eval()(z, y).add(1).div(2).clamp(0, 1)


def class_grid(generator: Generator, per_class: int = 8) -> torch.Tensor:
    return torch.cat(
        [sample_images(generator, c, per_class, seed=c) for c in range(generator.cfg.num_classes)]
    )


def export_program(generator: Generator, out: Path) -> None:
    """A torch.export program of G(z, y_onehot) with a dynamic batch size, for serving
    without raygan (TorchScript is deprecated in current PyTorch)."""
    cfg = generator.cfg
    example = (
        torch.randn(2, cfg.latent_dim),
        one_hot(torch.arange(2) % cfg.num_classes, cfg.num_classes),
    )
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        generator.eval(), example, dynamic_shapes=({0: batch}, {0: batch})
    )
    torch.export.save(program, out)


def export_best(experiment: str | Path, out: str | Path) -> Path:
    """Write the export folder atomically; returns its path."""
    experiment, out = Path(experiment), Path(out)
    if not experiment.is_dir():
        raise ConfigError(f"experiment directory not found: {experiment}")
    candidates = find_checkpoints(experiment)
    if not candidates:
        raise CheckpointError(f"{experiment}: no evaluated checkpoint to export yet")
    objective, source, state = candidates[0]
    ckpt = load_checkpoint(source)
    generator, _ = ckpt.build()
    steps = state.get("hparams", {}).get("steps")
    rows = read_trials(experiment, steps)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for file in source.iterdir():
            if file.name != "optimizer.pt":  # training state only; not needed to sample
                shutil.copy2(file, tmp / file.name)
        save_image(class_grid(generator), tmp / "samples.png", nrow=8, padding=1)
        export_program(generator, tmp / "generator.pt2")
        write_trials_table(rows, tmp / "trials.parquet")
        best = {
            "trial_id": state.get("run_id", ""),
            "step": state.get("step"),
            "objective": objective,
            "hyperparameters": state.get("hparams", {}),
            "metrics": state.get("metrics", {}),
            "source_checkpoint": str(source),
            "class_names": ckpt.class_names,
        }
        (tmp / "best.json").write_text(json.dumps(best, indent=2, default=float))
        (tmp / "MODEL_CARD.md").write_text(model_card(best, ckpt.model.to_dict(), len(rows)))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(best: dict[str, Any], model: dict[str, Any], trials: int) -> str:
    m, h = best["metrics"], best["hyperparameters"]
    searched = ", ".join(
        f"{k}={h.get(k)}" for k in ("lr", "beta1", "freeze_g", "freeze_d", "augment")
    )
    return f"""# raygan export

Class-conditional GAN generator fine-tuned by a raygan search ({trials} trials); this is the
best checkpoint over all evaluations of all trials
(trial `{best["trial_id"]}`, step {best["step"]}).

- Architecture: {model}
- Classes: {", ".join(best["class_names"])}
- Hyperparameters: {searched}
- Metrics (generated vs real training data): FID {m.get("fid", float("nan")):.3f},
  collapse {m.get("collapse", float("nan")):.3f}, coverage {m.get("coverage", float("nan")):.3f},
  precision {m.get("precision", float("nan")):.3f}, recall {m.get("recall", float("nan")):.3f},
  class accuracy {m.get("class_accuracy", float("nan")):.3f}
- Objective: FID x (1 + collapse) = {best["objective"]:.3f}

## Use
    raygan sample EXPORT_DIR --class {best["class_names"][0]} -n 16 -o samples.png

or without raygan: `torch.export.load("generator.pt2").module()(z, y_onehot)` with z ~ N(0, I)
of size {model["latent_dim"]} and y one-hot over {model["num_classes"]} classes; output in [-1, 1].

## Limits
FID here uses the feature extractor named in the hyperparameters (the default is a small
classifier trained on the target data), so it is comparable within this search only.
"""


def sample_to_file(
    export_dir: str | Path, class_name: str, n: int, out: str | Path, seed: int = 0
) -> Path:
    ckpt = load_checkpoint(export_dir)
    if class_name not in ckpt.class_names:
        raise ConfigError(f"unknown class {class_name!r}; the model knows {ckpt.class_names}")
    generator, _ = ckpt.build()
    images = sample_images(generator, ckpt.class_names.index(class_name), n, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, out, nrow=math.ceil(math.sqrt(n)), padding=1)
    return out
