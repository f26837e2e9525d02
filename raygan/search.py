"""The search: Ray Tune + Optuna over fine-tuning trials (schedulers: `raygan.scheduling`).

Each Tune trial runs the engine's loop (`raygan.trial.run_trial`) either in its own process
(one worker: no Ray Train start-up cost) or on a Ray Train `TorchTrainer` of `workers` DDP
workers. Both paths report the same metrics and checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from optuna.samplers import GPSampler, GridSampler, TPESampler
from ray import tune
from ray.tune.search import SearchAlgorithm

from raygan.checkpoint import Checkpoint
from raygan.config import (
    Choice,
    IntRange,
    LogUniform,
    SearchConfig,
    TrialConfig,
    grid_values,
)
from raygan.data import LabeledImages
from raygan.errors import ConfigError, SearchFailed
from raygan.experiment import check_resume_settings, save_settings
from raygan.metrics.features import inception_weights_path
from raygan.models.pretrained import load_base_and_data
from raygan.safety import TUNER_STATE, check_resumable
from raygan.scheduling import (
    # Schedulers and the searcher rank trials by their best objective so far ("score");
    # checkpoints are kept by their own objective.
    CHECKPOINT_METRIC,
    METRIC,
    MODE,
    board_name,
    board_open,
    build_scheduler,
    posted_stop,
)
from raygan.tensorboard import TrialLog
from raygan.trial import TrialOutput, run_trial

log = logging.getLogger(__name__)

# A Ray Train trial's driver only waits on its workers: it holds 1 MiB of memory, no CPU, so
# a 2-worker trial fits a 2-CPU machine (a bundle must hold some resource; 0 CPU alone won't do).
TRAIN_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
# Crash-consistency tests set this to a step: the process that wrote that step's checkpoint dies
# once, before reporting it, as a kill -9 at the worst moment would.
FAULT_BEFORE_REPORT = "RAYGAN_FAULT_BEFORE_REPORT"


# ---- before any trial starts -------------------------------------------------------------


def preflight(cfg: SearchConfig) -> tuple[Checkpoint, LabeledImages]:
    """Load and cross-check data, base model and space, so bad input fails in seconds."""
    base, data = load_base_and_data(cfg.model, cfg.base, cfg.data, cfg.skip_corrupt)
    model = base.build()
    for name, net in (("freeze_g", "generator"), ("freeze_d", "discriminator")):
        deepest, limit = _upper(cfg, name), model.max_freeze(net)
        if deepest > limit:
            raise ConfigError(
                f"{name} reaches {deepest} but the {net} of {cfg.base} has {limit} freezable "
                "groups (`raygan inspect` lists them)"
            )
    data.require_batch(int(_upper(cfg, "batch_size")))
    if cfg.trial.feature_extractor == "inception":
        inception_weights_path(cfg.trial.inception_weights)  # here, not after Ray has started
    return base, data


def _upper(cfg: SearchConfig, name: str) -> float:
    """The largest value `name` can take in this search."""
    values = [getattr(cfg.trial, name)]
    spec = cfg.space.get(name)
    if spec is not None:
        values += spec.values if isinstance(spec, Choice) else [spec.high]
    if cfg.seed_recipe and name in cfg.seed_recipe:
        values.append(cfg.seed_recipe[name])
    return max(values)


def connect(address: str | None, ray_train: bool = False) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS, as Ray does); else start a local one.

    A local cluster gets a dashboard only for Ray Train trials: Train's placement-group
    cleaner needs the State API it serves, and one-worker searches start faster without.
    Returns True when we joined a cluster someone else started: it may be autoscaling."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        dashboard = None if address or ray_train else False
        ray.init(address=address, log_to_driver=False, include_dashboard=dashboard)
    return address is not None


def check_resources(cfg: SearchConfig, may_grow: bool = False) -> int:
    """Refuse trials the cluster can never place; return how many fit at once.

    A cluster that `may_grow` (one we joined: its autoscaler may start GPU workers from
    zero) only gets a warning, and `max_concurrent` trials may wait for it at once: their
    resource requests are what make it scale up."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    shortfall = placement_shortfall(cfg, nodes)
    if shortfall and not may_grow:
        raise ConfigError(shortfall)
    if shortfall:
        log.warning("%s for now: trials wait until the autoscaler adds nodes", shortfall)
    if may_grow and cfg.max_concurrent:
        return cfg.max_concurrent  # what does not fit yet, the autoscaler may add
    if shortfall:
        return 1
    fit = worker_slots(nodes, cfg.cpus_per_worker, cfg.gpus_per_worker) // cfg.workers
    return max(1, min(fit, cfg.max_concurrent or fit))


def placement_shortfall(cfg: SearchConfig, nodes: list[dict[str, float]]) -> str | None:
    """Why one trial can never be placed on `nodes` (each alive node's `Resources`), or None.

    Totals are not enough: Ray places each worker on one node, and a worker that fits no
    node makes Ray Train wait for it forever."""
    cpus, gpus = (sum(node.get(kind, 0) for node in nodes) for kind in ("CPU", "GPU"))
    need_cpu, need_gpu = cfg.workers * cfg.cpus_per_worker, cfg.workers * cfg.gpus_per_worker
    if need_gpu > gpus:
        return (
            f"a trial needs {need_gpu:g} GPUs (workers {cfg.workers} x gpus_per_worker "
            f"{cfg.gpus_per_worker:g}) but the cluster has {gpus:g}"
        )
    if need_cpu > cpus:
        return (
            f"a trial needs {need_cpu:g} CPUs (workers {cfg.workers} x cpus_per_worker "
            f"{cfg.cpus_per_worker:g}) but the cluster has {cpus:g}"
        )
    worker = f"cpus_per_worker {cfg.cpus_per_worker:g}, gpus_per_worker {cfg.gpus_per_worker:g}"
    slots = worker_slots(nodes, cfg.cpus_per_worker, cfg.gpus_per_worker)
    if slots == 0:
        return (
            f"no node fits one worker ({worker}): the largest node has "
            f"{largest_node(nodes, by_gpu=cfg.gpus_per_worker > 0)}"
        )
    if slots < cfg.workers:
        return (
            f"a trial needs {cfg.workers} workers ({worker}) at once but the nodes fit only "
            f"{slots}: the largest node has {largest_node(nodes, by_gpu=cfg.gpus_per_worker > 0)}"
        )
    return None


def worker_slots(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many workers of `cpus` CPUs and `gpus` GPUs the nodes hold at once."""
    return sum(_node_slots(node, cpus, gpus) for node in nodes)


def _node_slots(node: dict[str, float], cpus: float, gpus: float) -> int:
    # The epsilon keeps e.g. 1.0 / 0.1 from flooring to 9.
    slots = math.floor(node.get("CPU", 0) / cpus + 1e-9)
    if gpus:
        slots = min(slots, math.floor(node.get("GPU", 0) / gpus + 1e-9))
    return slots


def largest_node(nodes: list[dict[str, float]], by_gpu: bool) -> str:
    """The biggest node's CPUs and GPUs, as words; biggest by GPUs first when `by_gpu`."""
    if not nodes:
        return "nothing (no alive nodes)"
    order = ("GPU", "CPU") if by_gpu else ("CPU", "GPU")
    node = max(nodes, key=lambda n: tuple(n.get(kind, 0) for kind in order))
    return f"{node.get('CPU', 0):g} CPUs and {node.get('GPU', 0):g} GPUs"


SHARED_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "glusterfs",
    "lustre",
    "fuse",
    "9p",
    "gpfs",
    "beegfs",
)


def is_shared_path(path: Path) -> bool:
    """True if `path` lies on a network filesystem (by /proc/mounts)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    target = path.resolve()
    best = max(
        (m for m in mounts if len(m) > 2 and target.is_relative_to(m[1])),
        key=lambda m: len(m[1]),
        default=None,
    )
    return best is not None and best[2].split(".")[0] in SHARED_FILESYSTEMS


def storage_root(storage: str) -> str:
    """Local paths are made absolute; a multi-node cluster needs storage every node sees."""
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not is_shared_path(path):
        raise ConfigError(
            f"storage {path} is local to this node, but the cluster has {len(nodes)} nodes: "
            "use a shared filesystem path (NFS/EFS/PVC) or s3://..."
        )
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# ---- the search space ----------------------------------------------------------------------


def param_space(cfg: SearchConfig) -> dict[str, Any]:
    space = {}
    for name, spec in cfg.space.items():
        if isinstance(spec, IntRange):
            space[name] = tune.randint(spec.low, spec.high + 1)  # randint excludes high
        elif isinstance(spec, LogUniform):
            space[name] = tune.loguniform(spec.low, spec.high)
        elif isinstance(spec, Choice):
            space[name] = tune.choice(spec.values)
        else:
            space[name] = tune.uniform(spec.low, spec.high)
    return space


def seed_point(cfg: SearchConfig) -> list[dict[str, Any]]:
    """The seed recipe as Optuna's first point, restricted to the searched names."""
    if not cfg.seed_recipe:
        return []
    trial = cfg.trial_config(cfg.seed_recipe)
    return [{name: seed_value(spec, trial, name) for name, spec in cfg.space.items()}]


def seed_value(spec: Any, trial: TrialConfig, name: str) -> Any:
    """The seed recipe's value of `name` as a point of the space: an unset lr_g/lr_d is the
    lr it falls back to, and a default outside the space is brought into it."""
    value = {"lr_g": trial.g_lr, "lr_d": trial.d_lr}.get(name, getattr(trial, name))
    if isinstance(spec, Choice):
        return value if value in spec.values else spec.values[0]
    return min(max(value, spec.low), spec.high)


def startup_trials(num_trials: int) -> int:
    """Random trials before TPE or GP model the space: a quarter of the budget, 2 to 10."""
    return min(10, max(2, num_trials // 4))


def trial_settings(search: SearchConfig, params: dict[str, Any]) -> TrialConfig:
    # The pretrained model is scored once by the search, not at the start of every trial.
    return search.trial_config({**params, "eval_at_start": False})


# ---- inside a trial ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled parameters (plain data: it is pickled)."""

    search: dict[str, Any]
    experiment_dir: str  # a path or a storage URI
    tensorboard_root: str  # always a filesystem path
    stop_board: str | None = None  # where Ray Train trials hear ASHA's stops


def _load_inputs(ctx: TrialContext) -> tuple[SearchConfig, Checkpoint, LabeledImages]:
    search = SearchConfig.model_validate(ctx.search)
    base, data = load_base_and_data(search.model, search.base, search.data, search.skip_corrupt)
    return search, base, data


def trial_driver(params: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable."""
    search = SearchConfig.model_validate(ctx.search)
    if search.workers == 1:
        run_in_trial_process(params, ctx)
    else:
        run_on_torch_trainer(params, ctx, search)


def run_in_trial_process(params: dict[str, Any], ctx: TrialContext) -> None:
    trial_id = tune.get_context().get_trial_id()
    run_reporting_to_ray(params, ctx, trial_id, tune.get_checkpoint(), tune.report, rank0=True)


def run_on_torch_trainer(params: dict[str, Any], ctx: TrialContext, search: SearchConfig) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = tune.get_context()
    trainer = TorchTrainer(
        ddp_worker_loop,
        train_loop_config={"params": params, "ctx": ctx, "trial_id": trial.get_trial_id()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=search.workers,
            use_gpu=search.gpus_per_worker > 0,
            resources_per_worker={"CPU": search.cpus_per_worker, "GPU": search.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            # Deterministic: a retried trial finds and resumes its own Train run.
            name=f"train-{trial.get_trial_id()}",
            storage_path=f"{ctx.experiment_dir}/train",
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=search.keep_checkpoints,
                checkpoint_score_attribute=CHECKPOINT_METRIC,
                checkpoint_score_order=MODE,
            ),
            failure_config=ray.train.FailureConfig(max_failures=search.max_failures),
        ),
    )
    trainer.fit()


def ddp_worker_loop(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker; Ray has already set up the process group."""
    import ray.train
    import ray.train.torch

    rank0 = ray.train.get_context().get_world_rank() == 0
    run_reporting_to_ray(
        config["params"],
        config["ctx"],
        config["trial_id"],
        ray.train.get_checkpoint(),
        ray.train.report,
        rank0=rank0,
        device=ray.train.torch.get_device(),
    )


def run_reporting_to_ray(
    params: dict[str, Any],
    ctx: TrialContext,
    trial_id: str,
    restored: tune.Checkpoint | None,
    ray_report: Any,
    rank0: bool,
    device: torch.device | None = None,
) -> None:
    """Run the loop, resuming from `restored`; `ray_report` is `ray.tune.report` in a Tune
    trial and `ray.train.report` on a Train worker (each is an error in the other's place).
    Rank 0 writes the TensorBoard log and, on Ray Train, hears the scheduler's stops."""
    search, base, data = _load_inputs(ctx)
    cfg = trial_settings(search, params)
    scratch = Path(tempfile.mkdtemp(prefix=f"raygan-{trial_id}-"))
    resume = Path(restored.to_directory(str(scratch / "restored"))) if restored else None

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> str:
        if checkpoint_dir:
            die_if_fault_injected(metrics["step"], ctx.experiment_dir)
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray_report(metrics, checkpoint=checkpoint)  # persists the checkpoint to storage
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if rank0 and ctx.stop_board:
            return posted_stop(ctx.stop_board, trial_id, metrics["step"])
        return ""

    # The HParams tab compares what the search varies; constant settings would crowd it.
    searched = {name: getattr(cfg, name) for name in search.space}
    trial_log = TrialLog(Path(ctx.tensorboard_root) / trial_id, searched) if rank0 else None
    try:
        run_trial(
            cfg,
            base,
            data,
            TrialOutput(scratch, report, log=trial_log, run_id=trial_id),
            resume_from=resume,
            device=device,
            eval_dir=None if "://" in ctx.experiment_dir else Path(ctx.experiment_dir),
        )
    finally:
        if trial_log is not None:
            trial_log.close()
        shutil.rmtree(scratch, ignore_errors=True)


def die_if_fault_injected(step: int, experiment_dir: str) -> None:
    if os.environ.get(FAULT_BEFORE_REPORT) != str(step) or "://" in experiment_dir:
        return
    try:
        (Path(experiment_dir) / f"fault-injected-at-{step}").touch(exist_ok=False)  # once only
    except FileExistsError:
        return
    os._exit(1)


# ---- the driver ----------------------------------------------------------------------------


def trainable_for(cfg: SearchConfig, ctx: TrialContext) -> Any:
    resources = (
        {"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}
        if cfg.workers == 1
        else TRAIN_DRIVER_RESOURCES
    )
    return tune.with_resources(tune.with_parameters(trial_driver, ctx=ctx), resources)


def build_searcher(cfg: SearchConfig, concurrency: int) -> SearchAlgorithm:
    """What picks each trial's parameters, running at most `concurrency` trials at once.

    tpe and grid are Optuna samplers behind Ray's `OptunaSearch`; random is Tune's own
    generator, the one searcher Ray lets run beside PBT."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    if cfg.searcher == "random":
        return BasicVariantGenerator(
            points_to_evaluate=seed_point(cfg), max_concurrent=concurrency, random_state=cfg.seed
        )
    samplers = {"tpe": tpe_sampler, "gp": gp_sampler, "grid": grid_sampler}
    optuna_search = OptunaSearch(
        metric=METRIC,
        mode=MODE,
        # A grid visits its own points; the seed recipe need not be one of them.
        points_to_evaluate=None if cfg.searcher == "grid" else seed_point(cfg),
        sampler=samplers[cfg.searcher](cfg),
    )
    return ConcurrencyLimiter(optuna_search, max_concurrent=concurrency)


def tpe_sampler(cfg: SearchConfig) -> TPESampler:
    return TPESampler(
        seed=cfg.seed,
        # Optuna's default of 10 random start-up trials makes any search of 10 or fewer
        # trials random search; the seed recipe counts toward them.
        n_startup_trials=startup_trials(cfg.num_trials),
        # Set explicitly: their defaults changed between Optuna 4 and 5.
        multivariate=True,
        constant_liar=True,
    )


def gp_sampler(cfg: SearchConfig) -> GPSampler:
    """Gaussian-process Bayesian optimisation, made for budgets of tens of trials; it proposes
    for running trials too (q-batch expected improvement)."""
    return GPSampler(seed=cfg.seed, n_startup_trials=startup_trials(cfg.num_trials))


def grid_sampler(cfg: SearchConfig) -> GridSampler:
    """Every point of the grid once, in an order shuffled by `seed` (the config allows no more
    trials than points, so a smaller budget visits a random subset)."""
    grid = {name: grid_values(spec) for name, spec in cfg.space.items()}
    return TuneGridSampler(grid, seed=cfg.seed)


class TuneGridSampler(GridSampler):
    """Tune's `num_samples` ends the search. Optuna's GridSampler calls `study.stop()` after
    the last point, which raises outside `study.optimize()` (Ray asks and tells)."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def checkpoint_config(cfg: SearchConfig) -> tune.CheckpointConfig:
    if cfg.scheduler.kind == "pbt":
        # Any trial's latest checkpoint may be copied into another trial at any time; keeping
        # only the best few by objective could delete it first.
        return tune.CheckpointConfig(num_to_keep=None)
    return tune.CheckpointConfig(
        num_to_keep=cfg.keep_checkpoints,
        checkpoint_score_attribute=CHECKPOINT_METRIC,
        checkpoint_score_order=MODE,
    )


def build_tuner(cfg: SearchConfig, root: str, concurrency: int, ctx: TrialContext) -> tune.Tuner:
    return tune.Tuner(
        trainable_for(cfg, ctx),
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            # The searcher and scheduler name their own metric: PBT ranks by another one.
            search_alg=build_searcher(cfg, concurrency),
            scheduler=build_scheduler(cfg, param_space(cfg), ctx.stop_board),
            num_samples=cfg.num_trials,
            # A reused trial actor keeps the previous trial's Ray Train controller, and its
            # placement group, alive (ray-project/ray#54305); one-worker trials have none, and
            # reusing their actor saves ~5 s of process start and imports per trial.
            reuse_actors=cfg.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=root,
            checkpoint_config=checkpoint_config(cfg),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            verbose=1,
        ),
    )


def experiment_dir_of(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def trial_context(cfg: SearchConfig, experiment: str) -> TrialContext:
    where = experiment if "://" in experiment else str(Path(experiment).resolve())
    # Only ASHA posts stops; PBT runs one-worker trials only.
    posted = cfg.workers > 1 and cfg.scheduler.kind == "asha"
    stop_board = board_name(where) if posted else None
    return TrialContext(cfg.model_dump(), experiment, tensorboard_root(experiment), stop_board)


def tensorboard_root(experiment_dir: str) -> str:
    if "://" in experiment_dir:  # TensorBoard needs a filesystem; keep it on the driver
        return str(Path("~/ray_results").expanduser() / Path(experiment_dir).name / "tensorboard")
    return f"{experiment_dir}/tensorboard"


@dataclass
class SearchOutcome:
    experiment: str
    export: Path | None
    summary: str


def run_search(
    cfg: SearchConfig,
    address: str | None = None,
    storage: str | None = None,
    resume: str | None = None,
) -> SearchOutcome:
    """Run (or resume) the search, export the best model and summarise.

    Bad input fails before any trial starts."""
    # The driver's own imports: trial processes import this module and should not pay for
    # them (torchvision, torchmetrics) before their first step.
    from raygan.export import export_best, read_trials
    from raygan.summary import format_summary, score_pretrained

    cfg = cfg.with_absolute_paths()

    if resume:
        check_resumable(resume)  # before Ray starts or anything is unpickled
        if "://" not in resume:
            check_resume_settings(Path(resume), cfg)
    base, data = preflight(cfg)
    joined = connect(address, ray_train=cfg.workers > 1)
    concurrency = check_resources(cfg, may_grow=joined)
    if resume:
        experiment = resume.rstrip("/")
        root = experiment.rsplit("/", 1)[0]
        ctx = trial_context(cfg, experiment)
        tuner = tune.Tuner.restore(experiment, trainable_for(cfg, ctx), resume_errored=True)
    else:
        root = storage_root(storage or cfg.storage)
        experiment = experiment_dir_of(root, cfg.name)
        if "://" not in experiment and Path(experiment).exists():
            raise experiment_exists(Path(experiment))
        ctx = trial_context(cfg, experiment)
        tuner = build_tuner(cfg, root, concurrency, ctx)
    log.info("search %s: %d trials, up to %d at once", experiment, cfg.num_trials, concurrency)
    local = "://" not in experiment
    pretrained = score_pretrained(cfg, base, data, Path(experiment)) if local else {"fid": math.nan}
    if local:
        # What --resume and export check against; a resume may change the export's settings.
        save_settings(Path(experiment), cfg)
    with board_open(ctx.stop_board):
        raise_if_all_failed(tuner.fit())
    if not local:
        return SearchOutcome(
            experiment, None, "export: sync the experiment locally, then `raygan export`"
        )
    export = export_best(experiment, Path(experiment) / "export")
    rows = read_trials(Path(experiment), cfg.trial.steps)
    return SearchOutcome(experiment, export, format_summary(rows, cfg, pretrained, export))


def experiment_exists(experiment: Path) -> ConfigError:
    if (experiment / TUNER_STATE).is_file():
        return ConfigError(
            f"experiment {experiment} exists: pass --resume {experiment} to continue it, "
            "or choose another --name"
        )
    return ConfigError(
        f"experiment {experiment} exists but holds no search state ({TUNER_STATE}): it stopped "
        "before its first trial; delete it, or choose another --name"
    )


def raise_if_all_failed(results: tune.ResultGrid) -> None:
    """A search without one working trial is an error, told by its first trial's error."""
    if len(results) and results.num_errors == len(results):
        raise SearchFailed(
            f"all {len(results)} trials failed; the first with: {last_line(results.errors[0])}"
        )


def last_line(error: BaseException) -> str:
    """An error's last non-empty line: Ray's wrapped trial errors end with the original
    `Type: message` after their traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__
