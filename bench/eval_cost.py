"""Evaluation cost: seconds per evaluation at the demo settings (500 generated samples against
the 500 real demo:target images, classifier features), split by phase, and its share of a demo
trial; plus proof that the real side (classifier, real features) is computed once.

* Cache: `Evaluator` is built against an empty cache directory (cold: trains the evaluation
  classifier and extracts real features), then again several times (warm); the cache files are
  counted after each construction.
* Cost: evaluations of the demo base generator alternate with blocks of training steps (the
  demo's batch, one thread as in a 1-CPU trial), so the eval/step ratio sees the same load.

    python bench/eval_cost.py                  # 3 evaluations, 10 steps between them
    python bench/eval_cost.py --reps 10 --steps 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import print_table, write_results

from raygan.checkpoint import save_checkpoint
from raygan.config import SearchConfig, load_config
from raygan.data import LabeledImages, load_dataset, sample_batches
from raygan.demo import load_base
from raygan.metrics.evaluate import Evaluator, color_moments, distance_to_real, extract
from raygan.metrics.prdc import collapse_score, per_class_prdc, prdc
from raygan.models.seam import GanModel, sample_images
from raygan.recipe import Recipe, build_recipe
from raygan.trial import Models, build_models, make_checkpoint, train_step

# The trial settings of the shipped demo search (steps, eval_every, eval_samples, batch).
DEMO_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
DEMO = load_config(SearchConfig, DEMO_YAML, []).trial


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def cache_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".safetensors")


def cache_rows(data: LabeledImages, cache: Path, warm_builds: int) -> list[dict[str, Any]]:
    """Cold then warm Evaluator constructions, with the cache's content after each."""
    rows = []
    for i in range(1 + warm_builds):
        _, seconds = timed(Evaluator, data, DEMO.eval_samples)
        files = cache_files(cache)
        rows.append(
            {
                "construction": "cold (empty cache)" if i == 0 else f"warm #{i}",
                "seconds": seconds,
                "cache_files": len(files),
                "mtimes_unchanged": i == 0 or mtimes(cache) == rows[0]["_mtimes"],
                "_mtimes": mtimes(cache),
            }
        )
    for row in rows:
        del row["_mtimes"]
    return rows


def mtimes(directory: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in directory.iterdir() if p.suffix == ".safetensors"}


def phases(ev: Evaluator, model: GanModel) -> dict[str, float]:
    """The steps of `Evaluator.evaluate` one by one (same calls, same order), timed."""
    t: dict[str, float] = {}
    fake, t["generate"] = timed(sample_images, model, ev.fake_labels, ev.seed)
    features, t["features"] = timed(extract, ev.extractor, fake, ev.device)
    _, t["classifier"] = timed(ev._predict, fake, features)

    _, t["fid"] = timed(distance_to_real, ev.fid, features)
    _, t["kid"] = timed(distance_to_real, ev.kid, features)
    _, t["prdc"] = timed(prdc, ev.real_features, features, ev.k)
    per_class, t["per_class_prdc"] = timed(
        per_class_prdc,
        ev.real_features,
        ev.real.labels,
        features,
        ev.fake_labels,
        ev.real.num_classes,
        ev.k,
    )
    _, t["collapse"] = timed(collapse_score, per_class, ev.real.num_classes)
    # The colour moments are part of its cost: the features were extracted above.
    _, t["color_fd"] = timed(lambda: distance_to_real(ev.color_fd, color_moments(fake)))
    return t


def train_block(m: Models, recipe: Recipe, batches: Any, steps: int) -> float:
    """Seconds per training step over `steps` steps (the demo recipe ignores step numbers)."""
    start = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(m, [next(batches)], DEMO, recipe, step)
    return (time.perf_counter() - start) / steps


def cost_rows(
    data: LabeledImages, args: argparse.Namespace, scratch: Path
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    base = load_base("demo")
    ev = Evaluator(data, DEMO.eval_samples)
    m = build_models(DEMO, base, torch.device("cpu"))
    recipe = build_recipe(DEMO, m.model)
    batches = sample_batches(data, DEMO.batch_size, seed=0)
    train_block(m, recipe, batches, 2)  # warm-up
    ev.evaluate(m.model)
    samples: dict[str, list[float]] = {}
    for rep in range(args.reps):
        _, total = timed(ev.evaluate, m.model)
        split = phases(ev, m.model)
        _, grid = timed(ev.sample_grid, m.model)
        ckpt = make_checkpoint(m, recipe, data.class_names, {"step": rep})
        _, save = timed(save_checkpoint, ckpt, scratch / f"ckpt-{rep}")
        step = train_block(m, recipe, batches, args.steps)
        for name, value in {
            "evaluate (total)": total,
            **split,
            "sample_grid (TensorBoard)": grid,
            "save_checkpoint": save,
            "train_step": step,
        }.items():
            samples.setdefault(name, []).append(value)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    rows = [
        {"phase": name, "median_s": value, "min_s": min(samples[name]), "max_s": max(samples[name])}
        for name, value in medians.items()
    ]
    return rows, medians


def share(medians: dict[str, float]) -> dict[str, float]:
    """Evaluation's share of a demo trial (`DEMO.steps` steps, one evaluation every
    `DEMO.eval_every`), sample grids for TensorBoard included."""
    evaluations = -(-DEMO.steps // DEMO.eval_every)
    per_eval = medians["evaluate (total)"] + medians["sample_grid (TensorBoard)"]
    train = DEMO.steps * medians["train_step"]
    return {
        "evaluations_per_trial": evaluations,
        "eval_s_per_trial": evaluations * per_eval,
        "train_s_per_trial": train,
        "eval_share": evaluations * per_eval / (evaluations * per_eval + train),
        "eval_in_steps": per_eval / medians["train_step"],
        "demo_steps": DEMO.steps,
        "demo_eval_every": DEMO.eval_every,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="timed evaluations")
    p.add_argument("--steps", type=int, default=10, help="training steps between evaluations")
    p.add_argument(
        "--warm-builds", type=int, default=3, help="Evaluator constructions after the first"
    )
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="raygan-bench-eval-"))
    cache = scratch / "cache"
    os.environ["RAYGAN_CACHE"] = str(cache)  # read at each use: a cold cache for this run
    data = load_dataset("demo:target", 64)
    caching = cache_rows(data, cache, args.warm_builds)
    print_table(caching)
    costs, medians = cost_rows(data, args, scratch)
    print_table(costs)
    shares = share(medians)
    print_table([shares])
    settings = {
        **vars(args),
        "eval_samples": DEMO.eval_samples,
        "real_images": len(data),
        "extractor": DEMO.feature_extractor,
        "cache_files": cache_files(cache),
    }
    print("wrote", write_results("eval_cost", settings, costs, cache=caching, share=shares))


if __name__ == "__main__":
    main()
