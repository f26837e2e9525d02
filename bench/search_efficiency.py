"""Search efficiency on the demo domains: best objective reached against total trial compute.

Ways to spend a budget, each over several seeds, all through raygan's own trainable
(`raygan.search.trial_driver`) on one local Ray cluster (by default 2 CPUs, 1 CPU per trial,
2 trials at once; `--concurrency` and `--gpu-share` change that):

  gp_asha      (a) the shipped demo search (`raygan.search.build_tuner`,
                   search_spaces/demo.yaml): Optuna GP + ASHA + collapse stopping, seed
                   recipe first; tpe_asha, random_asha and tpe_asha_before are variants of it
                   (`VARIANTS`: TPE, random draws, and the default before 2026-11-26);
  random       (b) random search over the same space (Tune's BasicVariantGenerator), no
                   scheduler, no collapse stopping: every trial runs all its steps;
  seed_recipe  (c) one trial of the seed recipe (demo.yaml's) for the whole budget of (b);
  scratch      (d) one trial from a randomly initialised G/D (`raygan.pretrain.
                   initial_checkpoint`) with the recipe of the shipped base (lr 2e-4, betas
                   (0.0, 0.99)) for the whole budget of (b).

Early stopping alone is also replayed on (b)'s complete trials (ASHA, grace 1 and 2).

Compute is "sequential-equivalent": trials are ordered by start; at each evaluation the
compute spent is the whole compute of the trials started earlier plus this trial's so far.
It is counted in trial-seconds (sum of Tune's `time_total_s`; CPU-seconds on the CPU) and in
training steps (free of CPU contention). The arms' order rotates from seed to seed.

Arms are compared on the best objective so far (FID x (1 + collapse), what the search
minimises). The target of issue 11: the default search (a) reaches random search's median final
best in at most 0.5x random search's compute, and its own final best is no worse.

The default is a small setting (4 trials x 30 steps, an evaluation every 15 steps, 3 seeds),
far below the demo search (search_spaces/demo.yaml: 8 trials x 240 steps, evaluation every
30), which bench/README §4 measures as it ships (about 20 minutes a seed here):

    python bench/search_efficiency.py
    python bench/search_efficiency.py --seeds 0 1 2 3 4 --arms gp_asha random \
        --trials 8 --steps 240 --eval-every 30                                 # demo scale
    # the same on one GPU, two trials sharing it as two share the demo's 2 CPUs:
    python bench/search_efficiency.py --seeds 0 1 2 3 4 --arms gp_asha random \
        --trials 8 --steps 240 --eval-every 30 --gpu-share 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import ray
from common import RESULTS, print_table, tagged, write_results
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from raygan.checkpoint import save_checkpoint
from raygan.config import PretrainConfig, SearchConfig, load_config
from raygan.data import load_dataset
from raygan.search import (
    METRIC,
    MODE,
    TrialContext,
    build_tuner,
    experiment_dir_of,
    param_space,
    tensorboard_root,
    trainable_for,
    trial_driver,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "demo.yaml"
REPLAYS = {"random+asha g1": 1, "random+asha g2": 2}  # ASHA grace (evaluations) replayed on (b)
# The shipped search and variants of it: overrides of search_spaces/demo.yaml, run through
# `build_tuner` like the demo itself.
VARIANTS: dict[str, tuple[str, ...]] = {
    "gp_asha": (),  # as shipped
    "tpe_asha": ("searcher=tpe",),
    "random_asha": ("searcher=random",),  # the shipped seed recipe and stopping; random draws
    # The default until 2026-11-26 (bench/README §4): cut at the first evaluation or at
    # collapse 0.95, and a seed recipe (lr 1e-5) too slow for the budget.
    "tpe_asha_before": (
        "searcher=tpe",
        "scheduler.grace_evals=1",
        "trial.collapse_stop=0.95",
        "seed_recipe.lr=1e-5",
    ),
}
ARMS = (*VARIANTS, "random", "seed_recipe", "scratch", *REPLAYS)
SCRATCH_RECIPE = {
    "lr": PretrainConfig().lr,
    "beta1": PretrainConfig().beta1,
    "beta2": PretrainConfig().beta2,
    "freeze_d": 0,
    "freeze_g": 0,
}
Curves = dict[str, dict[int, list[dict[str, float]]]]  # arm -> seed -> curve points
SCORE = "best_objective"  # what the arms are compared on: the objective the search minimises


# ---- configurations ----------------------------------------------------------------------


def demo_search(
    name: str, storage: Path, seed: int, args: argparse.Namespace, *extra: str
) -> SearchConfig:
    overrides = [
        f"name={name}",
        f"storage={storage}",
        f"seed={seed}",
        f"num_trials={args.trials}",
        f"trial.steps={args.steps}",
        f"trial.eval_every={args.eval_every}",
        f"trial.eval_samples={args.eval_samples}",
        f"trial.seed={seed}",
        *([f"gpus_per_worker={args.gpu_share}"] if args.gpu_share else []),
        *extra,
    ]
    return load_config(SearchConfig, DEMO, overrides)


def context(cfg: SearchConfig, storage: Path) -> TrialContext:
    experiment = experiment_dir_of(str(storage), cfg.name)
    return TrialContext(cfg.model_dump(), experiment, tensorboard_root(experiment))


def run_config(name: str, storage: Path) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        checkpoint_config=tune.CheckpointConfig(  # as build_tuner, so saving costs the same
            num_to_keep=2, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE
        ),
        verbose=0,
    )


# ---- the arms ------------------------------------------------------------------------------


def run_variant(variant: str, storage: Path, seed: int, args: argparse.Namespace) -> list[Path]:
    cfg = demo_search(f"{variant}-{seed}", storage, seed, args, *VARIANTS[variant])
    build_tuner(cfg, str(storage), args.concurrency, context(cfg, storage)).fit()
    return [storage / cfg.name]


def run_random(storage: Path, seed: int, args: argparse.Namespace) -> list[Path]:
    cfg = demo_search(f"random-{seed}", storage, seed, args, "trial.collapse_stop=null")
    tuner = tune.Tuner(
        trainable_for(cfg, context(cfg, storage)),
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=cfg.num_trials,
            search_alg=BasicVariantGenerator(random_state=seed),
            max_concurrent_trials=args.concurrency,
        ),
        run_config=run_config(cfg.name, storage),
    )
    tuner.fit()
    return [storage / cfg.name]


Recipes = dict[str, tuple[dict[str, Any], TrialContext]]


def fixed_recipe_driver(params: dict[str, Any], recipes: Recipes) -> None:
    """One trial of a fixed recipe: `params["arm"]` picks the recipe and its search context."""
    recipe, ctx = recipes[params["arm"]]
    trial_driver(recipe, ctx)


def run_single_recipes(storage: Path, seed: int, args: argparse.Namespace) -> list[Path]:
    """(c) and (d) side by side in one Tuner: each is one trial with the whole budget."""
    budget = [f"trial.steps={args.trials * args.steps}", "trial.collapse_stop=null"]
    seed_cfg = demo_search(f"seed_recipe-{seed}", storage, seed, args, *budget)
    scratch_base = save_checkpoint(
        initial_checkpoint_for_demo(seed), storage / f"scratch-base-{seed}"
    )
    scratch_cfg = demo_search(
        f"scratch-{seed}", storage, seed, args, *budget, f"base={scratch_base}"
    )
    recipes = {
        "seed_recipe": (dict(seed_cfg.seed_recipe or {}), context(seed_cfg, storage)),
        "scratch": (SCRATCH_RECIPE, context(scratch_cfg, storage)),
    }
    name = f"single-{seed}"
    resources = {"CPU": 1, "GPU": args.gpu_share}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(fixed_recipe_driver, recipes=recipes), resources),
        param_space={"arm": tune.grid_search(list(recipes))},
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, max_concurrent_trials=args.concurrency
        ),
        run_config=run_config(name, storage),
    )
    tuner.fit()
    return [storage / name]


def initial_checkpoint_for_demo(seed: int) -> Any:
    from raygan.demo import DEMO_PRETRAIN
    from raygan.pretrain import initial_checkpoint

    cfg = DEMO_PRETRAIN.model_copy(update={"seed": seed})  # the demo base's architecture
    return initial_checkpoint(cfg, load_dataset("demo:target", cfg.resolution).class_names)


RUNNERS = {
    **{variant: partial(run_variant, variant) for variant in VARIANTS},
    "random": run_random,
    "single": run_single_recipes,
}


# ---- reading the results ------------------------------------------------------------------


def trial_starts(experiment: Path) -> dict[str, float]:
    """trial_id -> when Tune started it, from the experiment state."""
    state_file = max(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    starts = {}
    for trial_json, run_metadata in json.loads(state_file.read_text())["trial_data"]:
        trial_id = json.loads(trial_json)["trial_id"]
        starts[trial_id] = json.loads(run_metadata).get("start_time") or math.inf
    return starts


def read_trials(experiment: Path) -> list[dict[str, Any]]:
    """Each trial: its arm, start time and evaluations (step, fid, objective, time_total_s)."""
    starts = trial_starts(experiment)
    trials = []
    for result_file in experiment.glob("*/result.json"):
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        evals = [r for r in reports if "fid" in r]
        if not evals:
            continue
        params = json.loads((result_file.parent / "params.json").read_text())
        arm = params.get("arm") or experiment.name.rsplit("-", 1)[0]
        trials.append(
            {
                "arm": arm,
                "trial_id": evals[0]["trial_id"],
                "start": starts[evals[0]["trial_id"]],
                "params": params,
                "evals": [
                    {k: r[k] for k in ("step", "fid", "objective", "collapse", "time_total_s")}
                    for r in evals
                ],
            }
        )
    return trials


def curve(trials: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Best objective and best FID so far against sequential-equivalent compute, one point
    per evaluation."""
    points, spent_s, spent_steps = [], 0.0, 0
    best = {"objective": math.inf, "fid": math.inf}
    for trial in sorted(trials, key=lambda t: t["start"]):
        for e in trial["evals"]:
            best = {k: min(v, e[k]) if math.isfinite(e[k]) else v for k, v in best.items()}
            points.append(
                {
                    "cpu_s": spent_s + e["time_total_s"],
                    "steps": spent_steps + e["step"],
                    "best_objective": best["objective"],
                    "best_fid": best["fid"],
                }
            )
        spent_s += trial["evals"][-1]["time_total_s"]
        spent_steps += trial["evals"][-1]["step"]
    return points


def compute_to_reach(points: list[dict[str, float]], target: float, unit: str) -> float:
    return next((p[unit] for p in points if p[SCORE] <= target), math.inf)


# ---- summary -----------------------------------------------------------------------------


def default_targets(curves: Curves) -> dict[str, float]:
    """Random search's median final best (issue 11's target), and the best that random search
    and the seed recipe alone (given the whole budget) reach on every seed: their worst."""
    finals = {arm: [c[-1][SCORE] for c in curves[arm].values()] for arm in curves}
    targets = {"random median": statistics.median(finals["random"])}
    targets |= {
        f"{arm} worst": max(finals[arm]) for arm in ("random", "seed_recipe") if arm in finals
    }
    return targets


def summarise(curves: Curves, targets: dict[str, float]) -> list[dict[str, Any]]:
    """One row per arm and target: final best, compute, and compute to reach the target (median
    over seeds; inf: never reached) as a ratio to random search's median."""
    rows = []
    for target_name, target in targets.items():
        for arm in ARMS:
            per_seed = curves.get(arm, {})
            if not per_seed:
                continue
            finals = [c[-1][SCORE] for c in per_seed.values()]
            to_target = {
                unit: {seed: compute_to_reach(c, target, unit) for seed, c in per_seed.items()}
                for unit in ("cpu_s", "steps")
            }
            rows.append(
                {
                    "target": f"{target_name} ({target:.0f})",
                    "arm": arm,
                    "best_median": statistics.median(finals),
                    "best_range": f"{min(finals):.0f}-{max(finals):.0f}",
                    "total_cpu_s": statistics.median(c[-1]["cpu_s"] for c in per_seed.values()),
                    "total_steps": statistics.median(c[-1]["steps"] for c in per_seed.values()),
                    "reached": f"{sum(math.isfinite(v) for v in to_target['steps'].values())}"
                    f"/{len(per_seed)}",
                    "cpu_s_to_target": statistics.median(to_target["cpu_s"].values()),
                    "steps_to_target": statistics.median(to_target["steps"].values()),
                    "ratio_cpu_vs_random": ratio_to_random(
                        curves, to_target["cpu_s"], target, "cpu_s"
                    ),
                    "ratio_steps_vs_random": ratio_to_random(
                        curves, to_target["steps"], target, "steps"
                    ),
                    "wins_vs_random": wins_against_random(curves, per_seed),
                }
            )
    return rows


def ratio_to_random(
    curves: Curves, spent: dict[int, float], target: float, unit: str
) -> float | None:
    """Median compute to the target over median compute of random search to it. Medians
    rather than per-seed ratios: random search misses its own median target on some seeds."""
    if "random" not in curves:
        return None
    randoms = [compute_to_reach(c, target, unit) for c in curves["random"].values()]
    return statistics.median(spent.values()) / statistics.median(randoms)


def wins_against_random(curves: Curves, per_seed: dict[int, list[dict[str, float]]]) -> str:
    """On how many seeds this arm's final best beats random search's on the same seed."""
    shared = [s for s in per_seed if s in curves.get("random", {})]
    wins = sum(per_seed[s][-1][SCORE] < curves["random"][s][-1][SCORE] for s in shared)
    return f"{wins}/{len(shared)}"


def plot(curves: Curves, targets: dict[str, float], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    palette = plt.get_cmap("tab10").colors
    colors = dict(zip(ARMS, palette[: len(ARMS)], strict=True))
    units = {
        "cpu_s": "trial compute, trial-seconds",
        "steps": "trial compute, training steps",
    }
    for ax, (unit, label) in zip(axes, units.items(), strict=True):
        for arm, per_seed in curves.items():
            for i, (_, points) in enumerate(sorted(per_seed.items())):
                ax.step(
                    [p[unit] for p in points],
                    [p[SCORE] for p in points],
                    where="post",
                    color=colors[arm],
                    alpha=0.8,
                    label=arm if i == 0 else None,
                )
        for name, target in targets.items():
            ax.axhline(target, color="gray", linestyle="--", linewidth=1)
            ax.text(
                0.99,
                target,
                f"target: {name} ",
                transform=ax.get_yaxis_transform(),
                fontsize=8,
                color="gray",
                ha="right",
                va="bottom",
            )
        ax.set_xlabel(label + ", sequential-equivalent")
        ax.set_yscale("log")
    axes[0].set_ylabel("best objective so far: FID x (1 + collapse)")
    axes[0].legend()
    fig.suptitle("raygan demo domains: best objective vs compute (one line per seed)")
    fig.tight_layout()
    fig.savefig(file, dpi=120)


# ---- main --------------------------------------------------------------------------------


def gpu_share(text: str) -> float:
    share = float(text)
    if not 0 <= share <= 1:  # the cluster has one GPU: a larger share would wait forever
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return share


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=4, help="trials per search (demo: 8)")
    p.add_argument("--steps", type=int, default=30, help="steps per search trial (demo: 240)")
    p.add_argument("--eval-every", type=int, default=15, help="(demo: 30)")
    p.add_argument("--eval-samples", type=int, default=500, help="(demo: 500)")
    p.add_argument(
        "--target-fid",
        type=float,
        default=None,
        help="an extra target best objective (always reported: random search's median, and "
        "the worst of random search and of the seed recipe; see default_targets)",
    )
    p.add_argument(
        "--arms",
        nargs="+",
        choices=list(RUNNERS),
        default=["gp_asha", "random", "single"],
        help="which searches to run (single: the seed_recipe and scratch arms)",
    )
    p.add_argument(
        "--concurrency", type=int, default=2, help="trials at once (the demo on 2 CPUs: 2)"
    )
    p.add_argument(
        "--gpu-share",
        type=gpu_share,
        default=0.0,
        help="each trial's share of one GPU (0: CPU only; 0.5: two trials share the GPU)",
    )
    p.add_argument("--storage", type=Path, default=None, help="default: a temporary directory")
    p.add_argument(
        "--tag",
        default=None,
        help="write results/search_efficiency_TAG.*: a partial run keeps the recorded files",
    )
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing: read the experiments already in --storage",
    )
    p.add_argument(
        "--reanalyse",
        type=Path,
        default=None,
        metavar="JSON",
        help="redo tables and plot from an earlier bench/results JSON, run nothing",
    )
    return p.parse_args()


def run_all(args: argparse.Namespace, storage: Path) -> list[Path]:
    # address="local": never join another Ray cluster running on this shared machine.
    ray.init(
        address="local",
        num_cpus=max(2, args.concurrency),
        num_gpus=1 if args.gpu_share else 0,
        include_dashboard=False,
        log_to_driver=False,
    )
    experiments: list[Path] = []
    try:
        for i, seed in enumerate(args.seeds):
            arms = args.arms
            order = arms[i % len(arms) :] + arms[: i % len(arms)]
            for runner in order:
                print(f"seed {seed}: {runner}", flush=True)
                experiments += RUNNERS[runner](storage, seed, args)
    finally:
        ray.shutdown()
    return experiments


def collect(experiments: list[Path]) -> tuple[Curves, list[dict[str, Any]]]:
    curves: Curves = {}
    trials_out = []
    for experiment in experiments:
        seed = int(experiment.name.rsplit("-", 1)[1])
        trials = read_trials(experiment)
        trials_out += [{**t, "seed": seed} for t in trials]
        for arm in {t["arm"] for t in trials}:
            curves.setdefault(arm, {})[seed] = curve([t for t in trials if t["arm"] == arm])
    return curves, trials_out


def asha_replay(trials: list[dict[str, Any]], grace: int, rf: int = 2) -> list[dict[str, Any]]:
    """Random search's trials cut as ASHA would have cut them: each trial's best-so-far, one
    iteration per evaluation, fed in start order to the bracket Ray's `ASHAScheduler` uses (one
    bracket, the shipped default). The random arm runs every trial to its end, so this shows
    what early stopping alone would have kept and thrown away, free of the searcher."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket  # Ray's own rule, not a copy

    evaluations = max(len(t["evals"]) for t in trials)
    bracket = _Bracket(grace, evaluations, rf, s=0, stop_last_trials=False)
    replayed = []
    for trial in sorted(trials, key=lambda t: t["start"]):
        kept: list[dict[str, Any]] = []
        best = math.inf
        for n, evaluation in enumerate(trial["evals"], start=1):
            kept.append(evaluation)
            best = min(best, evaluation["objective"])
            # Tune ends a trial at max_t itself; rewards are negated for mode "min".
            action = bracket.on_result(SimpleNamespace(trial_id=trial["trial_id"]), n, -best)
            if n < evaluations and action == TrialScheduler.STOP:
                break
        replayed.append({**trial, "evals": kept})
    return replayed


def random_trials_by_seed(trials: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for t in trials:
        if t["arm"] == "random":
            by_seed.setdefault(t["seed"], []).append(t)
    return by_seed


def replayed_curves(trials: list[dict[str, Any]]) -> Curves:
    by_seed = random_trials_by_seed(trials)
    return {
        arm: {seed: curve(asha_replay(ts, grace)) for seed, ts in by_seed.items()}
        for arm, grace in REPLAYS.items()
    }


def first_rung_agreement(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """How well a random-search trial's first evaluation predicts its best (Spearman rank
    correlation per seed): what ASHA's first rung bets on."""
    from scipy.stats import spearmanr

    per_seed = {}
    for seed, ts in sorted(random_trials_by_seed(trials).items()):
        first = [t["evals"][0]["objective"] for t in ts]
        best = [min(e["objective"] for e in t["evals"]) for t in ts]
        per_seed[seed] = float(spearmanr(first, best).statistic)
    return {"per_seed": per_seed, "median": statistics.median(per_seed.values())}


def main() -> None:
    args = parse_args()
    name = tagged("search_efficiency", args.tag)
    if args.reanalyse:  # only redo the tables and the plot from an earlier run's JSON
        earlier = json.loads(args.reanalyse.read_text())
        curves = {
            arm: {int(seed): c for seed, c in per_seed.items()}
            for arm, per_seed in earlier["curves"].items()
        }
        trials_out, storage = earlier["trials"], earlier["settings"]["storage"]
        args = argparse.Namespace(
            **{
                **earlier["settings"],
                "target_fid": args.target_fid,
                "reanalysed_from": earlier["command"],
            }
        )
    else:
        storage = args.storage or Path(tempfile.mkdtemp(prefix="raygan-bench-search-"))
        experiments = (
            sorted(
                p for p in storage.iterdir() if p.is_dir() and not p.name.startswith("scratch-base")
            )
            if args.collect_only
            else run_all(args, storage)
        )
        curves, trials_out = collect(experiments)
    if "random" not in curves:
        raise SystemExit(
            f"{storage}: no random-search arm to compare against; rerun with --arms ... random, "
            "or run it into the same --storage and use --collect-only"
        )
    curves |= replayed_curves(trials_out)
    agreement = first_rung_agreement(trials_out)
    print("first evaluation vs trial best, Spearman rank correlation (random search):", agreement)
    targets = default_targets(curves)
    if args.target_fid:
        targets["given"] = args.target_fid
    rows = summarise(curves, targets)
    print_table(rows)
    png = RESULTS / f"{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        plot(curves, targets, png)
    except ImportError as e:  # a lent GPU machine may lack matplotlib: keep the numbers
        print(f"no plot ({e}); redo it where matplotlib is with --reanalyse on the JSON")
        png.unlink(missing_ok=True)  # an older run's plot must not pass for this one's
    settings = {
        **vars(args),
        "storage": str(storage),
        "targets": targets,
        "scratch_recipe": SCRATCH_RECIPE,
    }
    for transient in ("reanalyse", "collect_only", "tag"):
        settings.pop(transient, None)
    path = write_results(
        name,
        settings,
        rows,
        curves=curves,
        trials=trials_out,
        first_rung_agreement=agreement,
    )
    print("wrote", path, *(["and", png] if png.exists() else []))


if __name__ == "__main__":
    main()
