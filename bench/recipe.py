"""Recipe benchmark: the plain 2016 recipe against the new default and the best knobs, at the
demo's CPU budget (one 400-step trial), over several seeds, on two small target sets:

* demo:target: the embedded "cartoon" shapes (500 images, 10 classes);
* digits: scikit-learn's bundled handwritten digits (real scans, 8x8 grey, upscaled to 64x64
  RGB; 50 per class = 500 images, 10 classes). Shipped inside scikit-learn: nothing is
  downloaded.

Every run fine-tunes the shipped demo base model with run_trial (no Ray) and keeps the best
checkpoint by objective, as a search's export does. Reported per recipe: FID, collapse and
class accuracy of that checkpoint (mean and spread over seeds) and a picture grid.

    pip install -e '.[bench]'
    python bench/recipe.py                       # 3 seeds, both data sets (~20 min on 2 cores)
    python bench/recipe.py --seeds 1 --steps 100 --data demo   # a quick look
    python bench/recipe.py --set ablation --seeds 1    # one knob at a time
    OMP_NUM_THREADS=1 python bench/recipe.py --data demo &     # both sets side by side
    OMP_NUM_THREADS=1 python bench/recipe.py --data digits
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, print_table, tagged, write_results
from torchvision.utils import save_image

from raygan.checkpoint import load_checkpoint
from raygan.config import RayganModelSpec, TrialConfig
from raygan.data import LabeledImages, load_dataset
from raygan.models.pretrained import load_base_and_data
from raygan.models.seam import GRID_PER_CLASS, class_grid, sample_images
from raygan.trial import TrialOutput, run_trial

# The demo search's budget for one trial, with the FreezeD depth and lr of its best trials.
BUDGET = {"steps": 400, "batch_size": 16, "eval_every": 100, "eval_samples": 500}
COMMON = {"lr": 2e-4, "beta1": 0.5, "freeze_d": 2}
RECIPES: dict[str, dict[str, Any]] = {
    "plain (before)": {"mismatch_weight": 0.0},
    "mismatch 1.0 (the new default)": {"mismatch_weight": 1.0},
    "mismatch + ada + r1": {"mismatch_weight": 1.0, "augment": "ada", "r1_gamma": 1.0},
    # Does more of the one knob that kept the class help more, and does the EMA, which cost
    # the class without it, cost it with it?
    "mismatch 2.0": {"mismatch_weight": 2.0},
    "mismatch + ema": {"mismatch_weight": 1.0, "ema_decay": 0.99},
    # G took the class only at its input; per-class norms carry it to every resolution.
    "mismatch + class_norm": {"mismatch_weight": 1.0, "class_norm": True},
    "mismatch 2.0 + class_norm": {"mismatch_weight": 2.0, "class_norm": True},
    # FreezeD keeps D's first blocks as the source photos (blurred, noisy) trained them.
    "mismatch, freeze_d 0": {"mismatch_weight": 1.0, "freeze_d": 0},
    # Measured in the first round (bench/README §7): the knobs peers ship, without mismatch.
    "ema + diffaug": {"mismatch_weight": 0.0, "ema_decay": 0.99, "augment": "diffaug"},
    "ema + diffaug + hinge + lecam": {
        "mismatch_weight": 0.0,
        "ema_decay": 0.99,
        "augment": "diffaug",
        "loss": "hinge",
        "lecam_weight": 0.1,
    },
}
# One knob at a time against the plain recipe, to find which ones matter (`--set ablation`).
ONE_KNOB: dict[str, dict[str, Any]] = {
    "plain": {},
    "ema 0.99": {"ema_decay": 0.99},
    "ema 0.99 from step 200": {"ema_decay": 0.99, "ema_start": 200},
    "diffaug": {"augment": "diffaug"},
    "diffaug:color": {"augment": "diffaug:color"},
    "ada": {"augment": "ada"},
    "hinge": {"loss": "hinge"},
    "d_steps 2": {"d_steps": 2},
    "lecam 0.1": {"lecam_weight": 0.1},
    "r1 1.0": {"r1_gamma": 1.0},
    "anchor 1.0": {"anchor_weight": 1.0},
    "norm_affine_only": {"norm_affine_only": True},
    "mismatch 1.0": {"mismatch_weight": 1.0},
}
ABLATION = {name: {"mismatch_weight": 0.0, **knob} for name, knob in ONE_KNOB.items()}
RECIPE_SETS = {"main": RECIPES, "ablation": ABLATION}


def digits_folder(root: Path, per_class: int = 50) -> Path:
    """scikit-learn's digits as an ImageFolder of 64x64 RGB PNGs, `per_class` per digit."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(digits.target == label)[:per_class]
        for i in picks:
            grey = (digits.images[i] / 16.0 * 255).astype("uint8")
            image = Image.fromarray(255 - grey).resize((64, 64), Image.BILINEAR).convert("RGB")
            image.save(folder / f"{i:04d}.png")
    return root


def run_one(
    base_spec: str, data_spec: str, recipe: dict[str, Any], seed: int, steps: int, out: Path
) -> dict:
    base, data = load_base_and_data(RayganModelSpec(), base_spec, data_spec, False)
    settings = {**BUDGET, "steps": steps, **COMMON, **recipe}
    cfg = TrialConfig(**settings, seed=seed, eval_at_start=False)
    start = time.perf_counter()
    result = run_trial(cfg, base, data, TrialOutput(out, lambda metrics, checkpoint: None))
    seconds = time.perf_counter() - start
    best = result.best or {}
    spread = relative_spread(result.best_checkpoint, data) if result.best_checkpoint else None
    return {
        "fid": best.get("fid"),
        "collapse": best.get("collapse"),
        "class_accuracy": best.get("class_accuracy"),
        "color_fd": best.get("color_fd"),
        "spread": spread,
        "best_step": best.get("step"),
        "seconds": seconds,
        "checkpoint": result.best_checkpoint,
    }


def within_class_spread(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the per-pixel standard deviation across that class's images."""
    return statistics.mean(
        images[labels == c].float().std(dim=0).mean().item() for c in labels.unique()
    )


def relative_spread(checkpoint: Path, data: LabeledImages) -> float:
    """The generator's within-class pixel spread over the real images': near 1 when each class
    varies as much as the data does, near 0 when G draws one picture per class whatever z is.
    Collapse says the same in feature space; this says it in pixels, without a feature net."""
    model = load_checkpoint(checkpoint).build()
    labels = torch.arange(BUDGET["eval_samples"]) % data.num_classes
    fake = sample_images(model, labels, seed=1234)
    real, real_labels = data.batch(torch.arange(len(data)))
    return within_class_spread(fake, labels) / within_class_spread(real, real_labels)


def summarise(name: str, data: str, runs: list[dict]) -> dict[str, Any]:
    row: dict[str, Any] = {"data": data, "recipe": name, "seeds": len(runs)}
    for key in ("fid", "collapse", "class_accuracy", "color_fd", "spread"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.mean(values) if values else None
        row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["s_per_run"] = statistics.mean(r["seconds"] for r in runs)
    return row


def grid_of(checkpoint: Path) -> torch.Tensor:
    return class_grid(load_checkpoint(checkpoint).build())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=BUDGET["steps"])
    parser.add_argument("--data", choices=["both", "demo", "digits"], default="both")
    parser.add_argument(
        "--base", default="demo", help="base checkpoint to fine-tune: demo (shipped) or a path"
    )
    parser.add_argument(
        "--set",
        choices=list(RECIPE_SETS),
        default="main",
        help="main: before / new default / best knobs; ablation: one knob at a time",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="RECIPE",
        help="run only these recipes of the set",
    )
    parser.add_argument(
        "--tag", default=None, help="results/recipe_..._only_TAG.*: keeps earlier partial runs"
    )
    parser.add_argument(
        "--spread",
        nargs="+",
        type=Path,
        metavar="CHECKPOINT",
        help="train nothing: the relative spread of these checkpoints on --spread-data",
    )
    parser.add_argument(
        "--spread-data", default="demo:target", help="demo:source, demo:target, or a folder"
    )
    args = parser.parse_args()
    if args.spread:
        return spread_only(args.spread, args.spread_data, args.tag)
    recipes = chosen_recipes(args.set, args.only)
    scratch = Path(tempfile.mkdtemp(prefix="raygan-recipe-"))
    sets = {"demo": "demo:target", "digits": None}
    if args.data != "both":
        sets = {args.data: sets[args.data]}
    if "digits" in sets:
        sets["digits"] = str(digits_folder(scratch / "digits-images"))
    rows, runs_out, grids = [], [], []
    for data_name, spec in sets.items():
        for name, recipe in recipes.items():
            runs = []
            for seed in range(args.seeds):
                out = scratch / "runs" / data_name / name.replace(" ", "_") / f"seed{seed}"
                run = run_one(args.base, spec, recipe, seed, args.steps, out)
                print(f"{data_name} | {name} | seed {seed} | {_short(run)}", flush=True)
                runs.append(run)
                runs_out.append({"data": data_name, "recipe": name, "seed": seed, **run})
            rows.append(summarise(name, data_name, runs))
            if runs[0]["checkpoint"]:
                grids.append(grid_of(runs[0]["checkpoint"]))
    print_table(rows)
    # One data set per process lets two runs share a 2-core box (OMP_NUM_THREADS=1 each).
    name = "recipe" if args.set == "main" else f"recipe_{args.set}"
    name = name if args.data == "both" else f"{name}_{args.data}"
    name = f"{name}_only" if args.only else name  # a partial run keeps the full set's file
    name = tagged(name, args.tag)
    picture = RESULTS / f"{name}.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(grids), picture, nrow=GRID_PER_CLASS, padding=1)
    settings = {
        "base": args.base,
        "budget": {**BUDGET, "steps": args.steps},
        "common": COMMON,
        "recipes": recipes,
    }
    path = write_results(name, settings, rows, runs=runs_out, picture=str(picture))
    print(f"wrote {path} and {picture} (rows: data x recipe; first seed's grid each)")


def spread_only(checkpoints: list[Path], data_spec: str, tag: str | None) -> None:
    data = load_dataset(data_spec, resolution=64)
    rows = [
        {"checkpoint": str(c), "data": data_spec, "spread": relative_spread(c, data)}
        for c in checkpoints
    ]
    print_table(rows)
    print("wrote", write_results(tagged("recipe_spread", tag), {"data": data_spec}, rows))


def chosen_recipes(recipe_set: str, only: list[str] | None) -> dict[str, dict[str, Any]]:
    recipes = RECIPE_SETS[recipe_set]
    unknown = set(only or []) - set(recipes)
    if unknown:
        raise SystemExit(f"--only: unknown recipes {sorted(unknown)}; choose from {list(recipes)}")
    return {k: v for k, v in recipes.items() if only is None or k in only}


def _short(run: dict) -> str:
    return (
        f"fid {run['fid']:.0f} collapse {run['collapse']:.3f} "
        f"class acc {run['class_accuracy']:.2f} colour FD {run['color_fd']:.4f} spread "
        f"{'-' if run['spread'] is None else format(run['spread'], '.2f')} "
        f"(step {run['best_step']}, {run['seconds']:.0f}s)"
    )


if __name__ == "__main__":
    main()
