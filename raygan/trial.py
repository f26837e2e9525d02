"""One fine-tuning trial: load pretrained G and D, freeze, train, evaluate, checkpoint.

The loop runs as-is at world size 1, or under any torch.distributed process group (DDP, gloo
on CPU, NCCL on GPU). It knows nothing of Ray: progress leaves through `report`, which the
search layer adapts to Ray Train and the CLI to a printed line.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from raygan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from raygan.config import TrialConfig
from raygan.data import LabeledImages, sample_batches
from raygan.ema import GeneratorEMA
from raygan.errors import ConfigError
from raygan.losses import d_loss, g_loss, mismatch_loss, wrong_labels
from raygan.metrics.evaluate import Evaluator, objective
from raygan.models.seam import GanModel
from raygan.recipe import Recipe, anchor_penalty, build_recipe, r1_step, restrict_to_norm_affine
from raygan.tensorboard import TrialLog

log = logging.getLogger(__name__)

# report(metrics, checkpoint_dir or None): called on every rank with rank 0's metrics; may
# return why a scheduler wants the trial stopped now (rank 0's answer counts).
Report = Callable[[dict[str, Any], Path | None], str | None]
# progress(step, {"loss_d", "loss_g"}): rank 0, every LOSS_WINDOW steps between evaluations.
Progress = Callable[[int, dict[str, float]], None]
LOSS_WINDOW = 10  # steps between the cross-rank loss reductions (and NaN checks)
RAW_FID_EVALUATIONS = 2  # evaluations that also score the raw generator beside its EMA


@dataclass
class TrialOutput:
    """Where a trial's results go: checkpoints under `out_dir`, each evaluation to `report`
    (every rank), and on rank 0 only TensorBoard scalars and grids to `log` and the losses
    between evaluations to `progress`. `run_id` is stamped into every checkpoint."""

    out_dir: Path
    report: Report
    log: TrialLog | None = None
    progress: Progress | None = None
    run_id: str = ""


@dataclass
class TrialResult:
    status: str  # "completed", "diverged", "collapsed" or "stopped" (by a scheduler)
    step: int
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_checkpoint: Path | None = None


@dataclass
class Models:
    model: GanModel  # the seam: plain G and D, how to call them, what is frozen
    g: torch.nn.Module  # model.g, DDP-wrapped in a process group, compiled with `compile`
    d: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sync_buffers: bool = False  # BatchNorm under DDP without SyncBatchNorm: see broadcast_buffers
    ddp_d: DDP | None = None  # D's DDP wrapper, under `d`'s torch.compile wrapper if any


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    """Outside Ray Train (which hands each worker its device), the first GPU if any."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def trainable_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def build_models(cfg: TrialConfig, base: Checkpoint, device: torch.device) -> Models:
    model = base.build()
    if cfg.class_norm:
        model = model.with_class_norm()
    _, world = rank_and_world()
    if world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch. SyncBatchNorm runs on GPUs only; on CPU
        # (gloo) each rank normalises by its own batch and DDP broadcasts rank 0's running
        # statistics at every forward, so the ranks still hold identical buffers.
        model.g = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.g)
        model.d = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.d)
    model.freeze(cfg.freeze_g, cfg.freeze_d)
    if cfg.norm_affine_only:
        restrict_to_norm_affine(model)
    model.to(device)
    g, d = model.g, model.d
    ddp_d = None
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g, d = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
        ddp_d = d
    if cfg.compile:
        g, d = compiled(g, d, device)
    # One fused kernel per update instead of a few per parameter group: on a GPU a small GAN's
    # step is bound by kernel launches (bench/README.md, GPU). The state dict is the same.
    adam = functools.partial(
        torch.optim.Adam, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )
    opt_g = adam(trainable_parameters(model.g), lr=cfg.g_lr)
    opt_d = adam(trainable_parameters(model.d), lr=cfg.d_lr)
    sync = world > 1 and device.type != "cuda" and has_batchnorm(model)
    return Models(model, g, d, opt_g, opt_d, sync_buffers=sync, ddp_d=ddp_d)


def compiled(
    g: torch.nn.Module, d: torch.nn.Module, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D under torch.compile, for the training step only. The eager modules share their
    parameters, so evaluation's other batch sizes, R1's double backward, the EMA and the
    checkpoints (no `_orig_mod.` keys) never touch the compiled graphs."""
    if device.type == "cpu":
        require_cpp_compiler()
    # A reused trial actor builds new modules every trial; each would add cache entries to
    # the same forward code until dynamo's recompile limit silently falls back to eager.
    torch._dynamo.reset()
    # Inductor sizes its compile workers by the node's cores, not by the trial's share.
    torch._inductor.config.compile_threads = torch.get_num_threads()
    # Static shapes: D sees two batch sizes (D and G updates), and dynamic kernels are slower
    # and rule out CUDA graphs.
    return torch.compile(g, dynamic=False), torch.compile(d, dynamic=False)


def require_cpp_compiler() -> None:
    """Inductor's CPU backend builds C++; without a compiler it fails deep in the first step."""
    from torch._inductor import config, cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        tried = ", ".join(c for c in config.cpp.cxx if c)
        raise ConfigError(
            f"compile: no working C++ compiler on this node (tried {tried}); install one, "
            "set CXX, or turn compile off"
        ) from None


def has_batchnorm(model: GanModel) -> bool:
    norms = torch.nn.modules.batchnorm._BatchNorm
    return any(isinstance(mod, norms) for net in (model.g, model.d) for mod in net.modules())


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    m: Models,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrialConfig,
    recipe: Recipe,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`cfg.d_steps` D updates, one per batch, then one G update on the last batch's fakes.
    Returns (loss_d of the last D update, loss_g)."""
    model = m.model
    for i, (real, labels) in enumerate(batches):
        last = i == len(batches) - 1
        z = torch.randn(len(real), model.latent_dim, device=real.device)
        with autocast(real.device), contextlib.nullcontext() if last else torch.no_grad():
            fake = model.generate(z, labels, m.g)  # G's graph is kept for its update only
        loss_d = d_update(m, real, labels, fake.detach(), cfg, recipe)
        if i == 0 and cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            recipe.r1_last = r1_step(model, m.opt_d, real, labels, cfg, recipe)
    loss_g = g_update(m, fake, labels, cfg, recipe)
    if m.sync_buffers:
        broadcast_buffers(model)
    if recipe.ema is not None:
        recipe.ema.update(model.g, step)
    recipe.augment.adjust(sum(len(real) for real, _ in batches))
    return loss_d, loss_g


def d_update(
    m: Models,
    real: torch.Tensor,
    labels: torch.Tensor,
    fake: torch.Tensor,
    cfg: TrialConfig,
    recipe: Recipe,
) -> torch.Tensor:
    model = m.model
    images, conditions = [real, fake], [labels, labels]
    if cfg.mismatch_weight > 0 and model.num_classes > 1:
        images.append(real)
        conditions.append(wrong_labels(labels, model.num_classes))
    with autocast(real.device):
        augmented = recipe.augment.apply(torch.cat(images))
        logits = model.discriminate(augmented, torch.cat(conditions), m.d).float()
    real_logits, fake_logits, *mismatched = logits.split(len(real))
    loss = d_loss(cfg.loss, real_logits, fake_logits)
    if mismatched:
        loss = loss + cfg.mismatch_weight * mismatch_loss(cfg.loss, mismatched[0])
    if recipe.lecam is not None:
        recipe.lecam.update(real_logits.detach(), fake_logits.detach())
        loss = loss + cfg.lecam_weight * recipe.lecam.penalty(real_logits, fake_logits)
    anchor = anchor_penalty(recipe, model, "discriminator")
    if anchor is not None:
        loss = loss + cfg.anchor_weight * anchor
    recipe.augment.observe(real_logits.detach())
    m.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    m.opt_d.step()
    return loss.detach()


def g_update(
    m: Models, fake: torch.Tensor, labels: torch.Tensor, cfg: TrialConfig, recipe: Recipe
) -> torch.Tensor:
    model = m.model
    # D's gradients from G's step are thrown away, so don't pay for their all-reduce.
    no_sync = m.ddp_d.no_sync() if m.ddp_d is not None else contextlib.nullcontext()
    with no_sync, autocast(fake.device):
        logits = model.discriminate(recipe.augment.apply(fake), labels, m.d).float()
        loss = g_loss(cfg.loss, logits)
    anchor = anchor_penalty(recipe, model, "generator")
    if anchor is not None:
        loss = loss + cfg.anchor_weight * anchor
    m.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    m.opt_g.step()
    return loss.detach()


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    _, world = rank_and_world()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world
    return values


def broadcast_buffers(model: GanModel) -> None:
    """Rank 0's buffers on every rank. DDP copies them in before each forward, but each rank
    then updates its BatchNorm statistics from its own batch (SyncBatchNorm needs GPUs), so
    without this the ranks would end a step, evaluate and stop with different statistics."""
    _, world = rank_and_world()
    if world == 1:
        return
    for net in (model.g, model.d):
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def gather_to_rank0(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_rank0(obj: Any) -> Any:
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_checkpoint(
    m: Models,
    recipe: Recipe,
    class_names: list[str],
    state: dict,
    data_rng: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Checkpoint:
    """The shipped generator is the EMA one when there is one; the trained weights, optimizers,
    the recipe's state and each rank's data-stream position go to the training-state file, for
    resume only."""
    ckpt = Checkpoint.of(m.model, class_names, state)
    training = {"g": m.opt_g.state_dict(), "d": m.opt_d.state_dict(), "recipe": recipe.state_dict()}
    if data_rng is not None:
        training["data_rng"] = data_rng
    if recipe.ema is not None:
        training["raw_generator"] = ckpt.generator
        ckpt.generator = averaged_generator_state(m.model, recipe.ema)
    ckpt.optimizer = training
    return ckpt


@torch.no_grad()
def averaged_generator_state(model: GanModel, ema: GeneratorEMA) -> dict[str, torch.Tensor]:
    """The EMA weights under G's own state-dict names (a Keras copy renames its tensors)."""
    trained = {k: v.clone() for k, v in model.g.state_dict().items()}
    ema.copy_to(model.g)
    averaged = {k: v.clone() for k, v in model.g.state_dict().items()}
    model.g.load_state_dict(trained)
    return averaged


def resume_state(
    m: Models, recipe: Recipe, cfg: TrialConfig, resume_from: Path | None
) -> dict[str, Any]:
    """Restore weights, optimizers and the recipe from a checkpoint of this trial; returns the
    checkpoint's state (step, collapse patience, ...), empty for a fresh start."""
    if resume_from is None:
        return {}
    ckpt = load_checkpoint(resume_from, with_optimizer=True)
    m.model.load_state_dicts(ckpt.generator, ckpt.discriminator, f"resumed {resume_from}")
    training = ckpt.optimizer or {}
    if recipe.ema is not None and "raw_generator" in training:
        recipe.ema = GeneratorEMA(m.model.g, cfg.ema_decay, cfg.ema_start)
        m.model.g.load_state_dict(training["raw_generator"])
    if "g" in training:
        m.opt_g.load_state_dict(training["g"])
        m.opt_d.load_state_dict(training["d"])
        # The saved state carries the old lr and betas; PBT restores a trial from another's
        # checkpoint with new ones, which must win.
        for opt, lr in ((m.opt_g, cfg.g_lr), (m.opt_d, cfg.d_lr)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (cfg.beta1, cfg.beta2)
    recipe.load_state_dict(training.get("recipe", {}))
    return {**ckpt.state, "data_rng": training.get("data_rng")}


@dataclass
class TrialJudge:
    """How a trial judges itself at each evaluation: its score (the best objective so far,
    since FID swings several-fold between evaluations and a last value ranks by noise) and
    the run of evaluations above the collapse limit. Restored on resume, so a retried trial
    stops and ranks exactly as an uninterrupted one."""

    collapse_stop: float | None
    collapse_patience: int
    best_so_far: float = math.inf
    high_collapse: int = 0

    @classmethod
    def resumed(cls, cfg: TrialConfig, state: dict[str, Any]) -> TrialJudge:
        return cls(
            cfg.collapse_stop,
            cfg.collapse_patience,
            best_so_far=float(state.get("metrics", {}).get("score", math.inf)),
            high_collapse=int(state.get("high_collapse", 0)),
        )

    def assess(self, metrics: dict[str, Any], last_step: bool) -> None:
        """Adds objective, score, trial_status and stop_reason (why the trial must stop, or
        "") to an evaluation's `metrics`."""
        metrics["objective"] = objective(metrics["fid"], metrics["collapse"])
        if math.isfinite(metrics["objective"]):
            self.best_so_far = min(self.best_so_far, metrics["objective"])
        metrics["score"] = self.best_so_far
        too_high = self.collapse_stop is not None and metrics["collapse"] > self.collapse_stop
        self.high_collapse = self.high_collapse + 1 if too_high else 0
        stop = ""
        if self.high_collapse >= self.collapse_patience:
            stop = (
                f"collapse {metrics['collapse']:.3f} > {self.collapse_stop} "
                f"for {self.high_collapse} evaluations"
            )
        metrics["trial_status"] = "collapsed" if stop else "completed" if last_step else "running"
        metrics["stop_reason"] = stop


def seed_training(
    cfg: TrialConfig, rank: int, world: int, start: int, saved: list | None
) -> torch.Generator:
    """Seeds this rank's noise and returns its data-stream generator. On resume, both continue
    where an uninterrupted run would be (the saved states, one per rank, when the world size
    is unchanged)."""
    torch.manual_seed(cfg.seed * 1000 + rank + start)
    data_rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank + start)
    if saved is not None and len(saved) == world:
        data_rng.set_state(saved[rank][0])
        torch.set_rng_state(saved[rank][1])
    return data_rng


def diverged_metrics(step: int, losses: dict[str, float], reason: str) -> dict[str, Any]:
    # An inf objective keeps schedulers that require the metric satisfied.
    return {
        "step": step,
        **losses,
        "fid": math.inf,
        "objective": math.inf,
        "score": math.inf,
        "trial_status": "diverged",
        "stop_reason": reason,
    }


def run_trial(
    cfg: TrialConfig,
    base: Checkpoint,
    data: LabeledImages,
    output: TrialOutput,
    resume_from: Path | None = None,
    device: torch.device | None = None,
    eval_dir: Path | None = None,
) -> TrialResult:
    """Train from `base` on `data`, resuming from `resume_from` (a checkpoint of this trial);
    results go to `output`. `device`: Ray Train's, else the first GPU, else the CPU.
    `eval_dir`: where the search keeps its one evaluation classifier (default: this node's
    cache)."""
    rank, world = rank_and_world()
    device = device or default_device()
    data.require_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)  # identical initial noise draws; DDP syncs weights anyway
    m = build_models(cfg, base, device)
    recipe = build_recipe(cfg, m.model)
    resumed = resume_state(m, recipe, cfg, resume_from)
    start = int(resumed.get("step", 0))

    @functools.cache
    def evaluator() -> Evaluator:
        """Built at the first evaluation, not before the first step (a trial's start-up cost);
        its RNG use (a classifier trained on a cache miss) must not shift training's noise."""
        with torch.random.fork_rng(devices=[]):
            return Evaluator(
                data,
                cfg.eval_samples,
                cfg.feature_extractor,
                cfg.inception_weights,
                device=device,
                classifier_dir=eval_dir,
            )

    data_rng = seed_training(cfg, rank, world, start, resumed.get("data_rng"))
    batches = sample_batches(data, cfg.batch_size, generator=data_rng)
    result = TrialResult(status="completed", step=start)
    hparams = cfg.model_dump()
    judge = TrialJudge.resumed(cfg, resumed)
    window, window_steps = torch.zeros(2, device=device), 0
    t0 = time.perf_counter()

    def score(step: int, losses: dict[str, float]) -> dict[str, Any]:
        """Rank 0: the shipped generator's scores, the recipe's signals and the judgement."""
        shipped = recipe.ema.module if recipe.ema is not None else None
        # Scoring draws random numbers (KID's subsets); training's stream must not see them.
        with torch.random.fork_rng(devices=[]):
            scores = evaluator().evaluate(m.model, shipped).scalars()
            if shipped is not None and len(result.history) < RAW_FID_EVALUATIONS:
                scores["fid_raw"] = evaluator().evaluate(m.model).fid  # what the EMA buys
        metrics = {"step": step, **losses, **scores, **recipe.signals()}
        judge.assess(metrics, last_step=step == cfg.steps)
        metrics["elapsed_s"] = time.perf_counter() - t0
        if output.log is not None:
            output.log.evaluation(step, metrics, evaluator().sample_grid(m.model, shipped))
        return metrics

    def evaluate_and_report(step: int, losses: dict[str, float]) -> tuple[str, str]:
        """Rank 0 scores and maybe checkpoints; every rank reports. Returns why the trial
        stops: (status, reason), or ("", "") to go on."""
        metrics, ckpt_dir = None, None
        rng_states = gather_to_rank0((data_rng.get_state(), torch.get_rng_state()))
        if rank == 0:
            metrics = score(step, losses)
            stop = metrics["stop_reason"]
            if step > start and (step % cfg.checkpoint_interval == 0 or step == cfg.steps or stop):
                state = {
                    "step": step,
                    "run_id": output.run_id,
                    "hparams": hparams,
                    "metrics": metrics,
                    "high_collapse": judge.high_collapse,
                }
                ckpt = make_checkpoint(m, recipe, data.class_names, state, rng_states)
                ckpt_dir = save_checkpoint(ckpt, checkpoint_dir(output.out_dir, step))
            record(result, metrics, ckpt_dir)
        metrics = broadcast_from_rank0(metrics)
        told = broadcast_from_rank0(output.report(metrics, ckpt_dir) or "")
        if metrics["stop_reason"]:
            return "collapsed", metrics["stop_reason"]
        return ("stopped", told) if told else ("", "")

    if cfg.eval_at_start and start == 0:
        evaluate_and_report(0, {"loss_d": math.nan, "loss_g": math.nan})
    if start >= cfg.steps and resumed.get("run_id") != output.run_id:
        # PBT can restore this trial from another's final checkpoint. Nothing is left to
        # train; the trial's last word is that checkpoint's evaluation, not its own stale
        # "running" report. (A trial's own final checkpoint was reported before it was saved
        # to storage, so a retry from it has nothing to add.)
        final = resumed["metrics"]
        output.report(final, None)
        result.status, result.reason = final["trial_status"], final["stop_reason"]
    for step in range(start + 1, cfg.steps + 1):
        step_batches = [
            (real.to(device), labels.to(device))
            for real, labels in (next(batches) for _ in range(cfg.d_steps))
        ]
        loss_d, loss_g = train_step(m, step_batches, cfg, recipe, step)
        window += torch.stack([loss_d, loss_g])
        window_steps += 1
        due_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if step % LOSS_WINDOW and not due_eval:
            continue
        averaged = mean_across_ranks(window / window_steps)
        window, window_steps = torch.zeros(2, device=device), 0
        losses = {"loss_d": float(averaged[0]), "loss_g": float(averaged[1])}
        result.step = step
        if not all(math.isfinite(v) for v in losses.values()):
            result.status, result.reason = "diverged", f"non-finite loss at step {step}: {losses}"
            output.report(diverged_metrics(step, losses, result.reason), None)
            break
        if due_eval:
            status, reason = evaluate_and_report(step, losses)
            if status:
                result.status, result.reason = status, reason
                break
        elif output.progress is not None and rank == 0:
            output.progress(step, losses)
    return result


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where a run in `out_dir` keeps its checkpoint of `step`."""
    return out_dir / "checkpoints" / f"step-{step:06d}"


def record(result: TrialResult, metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
    result.history.append(metrics)
    if ckpt_dir is not None and (
        result.best is None or metrics["objective"] < result.best["objective"]
    ):
        result.best, result.best_checkpoint = metrics, ckpt_dir
