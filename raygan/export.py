"""Export: the best checkpoint of the search, ready to sample from.

The best few checkpoints by their search objective are scored again on fresh noise and the
best by that re-score is exported: the minimum over dozens of noisy evaluations is partly luck.
With a class accuracy floor, only checkpoints that reach it, in the search and again on the
fresh noise, are exported: the objective does not count the class.

    OUT/generator.safetensors, discriminator.safetensors, raygan.json   the checkpoint
    OUT/generator.pt2              G(z, class index) as a torch.export program, for serving
                                   (PyTorch models; Keras models: generator.keras and
                                   discriminator.keras, loadable by plain Keras)
    OUT/samples.png                one row per class
    OUT/trials.parquet             every trial: params, best/last metrics, status, stop reason
    OUT/best.json                  trial, hyperparameters, metrics, re-scores and class floor
    OUT/MODEL_CARD.md

Everything is read from the experiment directory alone, so export works after the search,
on another machine, or on a half-finished experiment.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torchvision.utils import save_image

from raygan.checkpoint import SIDECAR, _replace_dir, load_checkpoint
from raygan.config import SEARCHABLE, SearchConfig
from raygan.errors import CheckpointError, ConfigError
from raygan.experiment import STOPPED_BY_ASHA, load_settings
from raygan.metrics.evaluate import Evaluator, objective
from raygan.models.pretrained import load_base_and_data
from raygan.models.seam import GRID_PER_CLASS, class_grid, sample_images

log = logging.getLogger(__name__)

# Not the noise seed of the search's evaluations (Evaluator's default), so the re-score sees
# images no checkpoint was selected on.
RESCORE_SEED = 4321
Candidate = tuple[float, Path, dict[str, Any]]  # (search objective, checkpoint dir, state)

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
    "color_fd",
)


def find_checkpoints(experiment: Path) -> list[Candidate]:
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
        return "stopped", STOPPED_BY_ASHA
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


def rescore(candidates: list[Candidate], cfg: SearchConfig, experiment: Path) -> list[dict]:
    """Each candidate scored on fresh noise, with the search's data, evaluation settings and
    feature space (the classifier the search trained into the experiment)."""
    from raygan.trial import default_device

    _, data = load_base_and_data(cfg.model, cfg.base, cfg.data, cfg.skip_corrupt)
    trial = cfg.trial
    device = default_device()
    evaluator = Evaluator(
        data,
        trial.eval_samples,
        trial.feature_extractor,
        trial.inception_weights,
        seed=RESCORE_SEED,
        device=device,
        classifier_dir=experiment,
    )
    scores = []
    for search_objective, source, state in candidates:
        model = load_checkpoint(source).build()
        model.to(device)
        metrics = evaluator.evaluate(model).scalars()
        scores.append(
            {
                "trial_id": state.get("run_id", ""),
                "step": state.get("step"),
                "source_checkpoint": str(source),
                "objective": search_objective,
                "rescored_objective": objective(metrics["fid"], metrics["collapse"]),
                "rescored_fid": metrics["fid"],
                "rescored_collapse": metrics["collapse"],
                "rescored_class_accuracy": metrics["class_accuracy"],
            }
        )
    return scores


def choose_checkpoint(
    experiment: Path,
    candidates: list[Candidate],
    top: int | None,
    min_class_accuracy: float | None,
) -> tuple[Candidate, list[dict], float | None]:
    """The checkpoint to export, the re-scores it was chosen by (empty: plain argmin) and the
    class accuracy floor it was chosen under (None: no floor)."""
    cfg = load_settings(experiment)
    floor = floor_of(cfg, min_class_accuracy)
    candidates = reaching_floor(candidates, floor)
    if cfg is None:
        log.warning(
            "%s has no search settings (an older experiment): exporting the best search "
            "objective without re-scoring",
            experiment,
        )
        return candidates[0], [], floor
    top = cfg.rescore_top if top is None else top
    if top == 0:
        return candidates[0], [], floor
    scores = rescore(candidates[:top], cfg, experiment)
    # The floor is checked again on fresh samples: a search's class accuracy is a best-of-many
    # too, though a far less noisy one than FID.
    passing = [i for i, s in enumerate(scores) if reaches(s["rescored_class_accuracy"], floor)]
    if not passing:
        log.warning(
            "no re-scored checkpoint reaches min_class_accuracy %.3g on fresh samples: "
            "exporting the best re-score; best.json and the model card say the floor was missed",
            floor,
        )
    best = min(passing or range(len(scores)), key=lambda i: scores[i]["rescored_objective"])
    return candidates[best], scores, floor


def floor_of(cfg: SearchConfig | None, override: float | None) -> float | None:
    """The export's class accuracy floor: the override, else the search's; 0 is none."""
    floor = cfg.min_class_accuracy if cfg is not None and override is None else override
    return floor or None


def reaches(class_accuracy: float, floor: float | None) -> bool:
    # Class accuracy is a float32 fraction: 350 of 500 reads 0.69999999.
    return floor is None or class_accuracy >= floor - 1e-6


def reaching_floor(candidates: list[Candidate], floor: float | None) -> list[Candidate]:
    """The candidates whose class accuracy in the search reaches the floor; all of them, with a
    warning, when none does (a model that misses it beats no model after hours of search)."""
    passing = [c for c in candidates if reaches(class_accuracy_of(c[2]), floor)]
    if not passing:
        measured = [a for a in map(class_accuracy_of, (c[2] for c in candidates)) if a == a]
        log.warning(
            "no checkpoint reaches min_class_accuracy %.3g in the search (the best reached "
            "%.3f): choosing among all of them",
            floor,
            max(measured, default=math.nan),
        )
    return passing or candidates


def class_accuracy_of(state: dict[str, Any]) -> float:
    """The class accuracy a checkpoint's evaluation recorded; NaN, which reaches no floor,
    where it recorded none."""
    value = state.get("metrics", {}).get("class_accuracy")
    return float(value) if isinstance(value, (int, float)) else math.nan


def export_best(
    experiment: str | Path,
    out: str | Path,
    rescore_top: int | None = None,
    min_class_accuracy: float | None = None,
) -> Path:
    """Write the export folder atomically; returns its path. `rescore_top`: how many of the
    best checkpoints to re-score (default: the search's `rescore_top`; 0: plain argmin).
    `min_class_accuracy`: export only checkpoints whose class accuracy reaches it (default:
    the search's `min_class_accuracy`)."""
    experiment, out = Path(experiment), Path(out)
    if min_class_accuracy is not None and not 0 <= min_class_accuracy <= 1:
        raise ConfigError(
            f"min_class_accuracy {min_class_accuracy:g}: not a class accuracy in [0, 1]"
        )
    if not experiment.is_dir():
        raise ConfigError(f"experiment directory not found: {experiment}")
    candidates = find_checkpoints(experiment)
    if not candidates:
        raise CheckpointError(f"{experiment}: no evaluated checkpoint to export yet")
    (search_objective, source, state), scores, floor = choose_checkpoint(
        experiment, candidates, rescore_top, min_class_accuracy
    )
    ckpt = load_checkpoint(source)
    model = ckpt.build()
    steps = state.get("hparams", {}).get("steps")
    rows = read_trials(experiment, steps)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for file in source.iterdir():
            if file.name != "optimizer.pt":  # training state only; not needed to sample
                shutil.copy2(file, tmp / file.name)
        save_image(class_grid(model), tmp / "samples.png", nrow=GRID_PER_CLASS, padding=1)
        serving = model.export(tmp)
        write_trials_table(rows, tmp / "trials.parquet")
        chosen = next((s for s in scores if s["source_checkpoint"] == str(source)), {})
        best = {
            "trial_id": state.get("run_id", ""),
            "step": state.get("step"),
            "objective": search_objective,
            "rescored_objective": chosen.get("rescored_objective"),
            "hyperparameters": state.get("hparams", {}),
            "metrics": state.get("metrics", {}),
            "source_checkpoint": str(source),
            "class_names": ckpt.class_names,
            "rescore": {"seed": RESCORE_SEED, "candidates": scores} if scores else None,
            "class_floor": class_floor(floor, state, chosen),
        }
        (tmp / "best.json").write_text(json.dumps(best, indent=2, default=float))
        card = model_card(best, ckpt.spec, model.latent_dim, serving, len(rows))
        (tmp / "MODEL_CARD.md").write_text(card)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def class_floor(
    floor: float | None, state: dict[str, Any], chosen: dict[str, Any]
) -> dict[str, Any] | None:
    """Whether the export reaches the floor: on fresh samples where it was re-scored."""
    if floor is None:
        return None
    if "rescored_class_accuracy" in chosen:
        accuracy, measured = chosen["rescored_class_accuracy"], "on fresh samples"
    else:
        accuracy, measured = class_accuracy_of(state), "in the search"
    return {
        "min_class_accuracy": floor,
        "class_accuracy": accuracy,
        "measured": measured,
        "met": reaches(accuracy, floor),
    }


def model_card(
    best: dict[str, Any], spec: dict[str, Any], latent_dim: int, serving: list[str], trials: int
) -> str:
    m, h = best["metrics"], best["hyperparameters"]
    # Every knob a search can set, not just the ones this search did: the rest are the recipe too.
    searched = ", ".join(
        f"{k}={h[k]:.4g}" if isinstance(h[k], float) else f"{k}={h[k]}"
        for k in SEARCHABLE
        if h.get(k) is not None
    )
    return f"""# raygan export

Class-conditional GAN generator fine-tuned by a raygan search ({trials} trials); this is the
best checkpoint of the search (trial `{best["trial_id"]}`, step {best["step"]}).

- Model: {spec}
- Classes: {", ".join(best["class_names"])}
- Hyperparameters: {searched}
- Metrics (generated vs real training data): FID {m.get("fid", float("nan")):.3f},
  collapse {m.get("collapse", float("nan")):.3f}, coverage {m.get("coverage", float("nan")):.3f},
  precision {m.get("precision", float("nan")):.3f}, recall {m.get("recall", float("nan")):.3f},
  class accuracy {m.get("class_accuracy", float("nan")):.3f},
  colour FD {m.get("color_fd", float("nan")):.4f}
- Objective: FID x (1 + collapse) = {best["objective"]:.3f} in the search{_rescore_note(best)}
{_floor_note(best["class_floor"])}
## Use
    raygan sample EXPORT_DIR --class {best["class_names"][0]} -n 16 -o samples.png

or without raygan: {_serving_hint(serving, latent_dim, len(best["class_names"]))}

## Limits
FID here uses the feature extractor named in the hyperparameters (the default is a small
classifier trained on the target data), so it is comparable within this search only.
"""


def _rescore_note(best: dict[str, Any]) -> str:
    if not best["rescore"]:
        return " (the best of all evaluations, not re-scored)"
    count = len(best["rescore"]["candidates"])
    return (
        f"; {best['rescored_objective']:.3f} on fresh samples (the best {count} checkpoints "
        "by the search were re-scored; this one scored best)"
    )


def _floor_note(floor: dict[str, Any] | None) -> str:
    if floor is None:
        return ""
    if floor["met"]:
        return (
            f"- Class accuracy floor {floor['min_class_accuracy']:.3g}: met "
            f"({floor['class_accuracy']:.3f} {floor['measured']}); checkpoints below it "
            "were not exported\n"
        )
    return (
        f"- **Class accuracy floor {floor['min_class_accuracy']:.3g}: missed** "
        f"({floor['class_accuracy']:.3f} {floor['measured']}): no checkpoint reached it, so "
        "this is the best of those that did not. It may ignore the class it is asked for.\n"
    )


def _serving_hint(serving: list[str], latent_dim: int, num_classes: int) -> str:
    if "generator.pt2" in serving:
        return (
            f'`torch.export.load("generator.pt2").module()(z, y)` with z ~ N(0, I) of size '
            f"{latent_dim} and y class indices in [0, {num_classes}); output NCHW in [-1, 1]."
        )
    return (
        f"load `generator.keras` with Keras (`keras.saving.load_model`) and call it on "
        f"[z, y_onehot], z ~ N(0, I) of size {latent_dim}; output NHWC in [-1, 1]."
    )


def sample_to_file(
    export_dir: str | Path, class_name: str, n: int, out: str | Path, seed: int = 0
) -> Path:
    out = Path(out)
    if n < 1:
        raise ConfigError(f"-n {n}: the number of images must be at least 1")
    if out.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"{out}: not an image file name; end it in .png or .jpg")
    ckpt = load_checkpoint(export_dir)
    if class_name not in ckpt.class_names:
        raise ConfigError(f"unknown class {class_name!r}; the model knows {ckpt.class_names}")
    model = ckpt.build()
    labels = torch.full((n,), ckpt.class_names.index(class_name))
    images = sample_images(model, labels, seed).add(1).div(2).clamp(0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, out, nrow=math.ceil(math.sqrt(n)), padding=1)
    return out
