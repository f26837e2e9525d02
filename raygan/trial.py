"""One fine-tuning trial: load pretrained G and D, freeze, train, evaluate, checkpoint.

The loop runs as-is at world size 1, or under any torch.distributed process group (DDP, gloo
on CPU, NCCL on GPU). It knows nothing of Ray: progress leaves through `report`, which the
search layer adapts to Ray Train and the CLI to a printed line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from raygan.augment import diff_augment
from raygan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from raygan.config import TrialConfig
from raygan.data import LabeledImages, sample_batches
from raygan.metrics.evaluate import Evaluator, objective
from raygan.model import freeze_blocks, one_hot, trainable_parameters
from raygan.tensorboard import TrialLog

log = logging.getLogger(__name__)

# report(metrics, checkpoint_dir or None): called on every rank with rank 0's metrics.
Report = Callable[[dict[str, Any], Path | None], None]
LOSS_WINDOW = 10  # steps between the cross-rank loss reductions (and NaN checks)


@dataclass
class TrialResult:
    status: str  # "completed", "diverged" or "collapsed"
    step: int
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_checkpoint: Path | None = None


@dataclass
class Models:
    g: torch.nn.Module  # possibly DDP-wrapped
    d: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    @property
    def g_plain(self) -> torch.nn.Module:
        return self.g.module if isinstance(self.g, DDP) else self.g

    @property
    def d_plain(self) -> torch.nn.Module:
        return self.d.module if isinstance(self.d, DDP) else self.d


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def build_models(cfg: TrialConfig, base: Checkpoint, device: torch.device) -> Models:
    g, d = base.build()
    freeze_blocks(g, cfg.freeze_g)
    freeze_blocks(d, cfg.freeze_d)
    g, d = g.to(device), d.to(device)
    _, world = rank_and_world()
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g, d = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(trainable_parameters(g), lr=cfg.g_lr, betas=betas)
    opt_d = torch.optim.Adam(trainable_parameters(d), lr=cfg.d_lr, betas=betas)
    return Models(g, d, opt_g, opt_d)


def train_step(
    m: Models, real: torch.Tensor, labels: torch.Tensor, cfg: TrialConfig, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One D update then one G update, binary cross-entropy on logits. Returns (loss_d, loss_g)."""
    device = real.device
    y = one_hot(labels, num_classes)
    z = torch.randn(len(real), m.g_plain.cfg.latent_dim, device=device)
    augment = diff_augment if cfg.augment else (lambda x: x)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        fake = m.g(z, y)
        group = math.gcd(4, len(real))
        logits = m.d(augment(torch.cat([real, fake.detach()])), torch.cat([y, y]), group).float()
        targets = torch.cat([torch.ones(len(real)), torch.zeros(len(real))]).to(device)
        loss_d = F.binary_cross_entropy_with_logits(logits, targets)
    m.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    m.opt_d.step()

    # D's gradients from G's step are thrown away, so don't pay for their all-reduce.
    no_sync = m.d.no_sync() if isinstance(m.d, DDP) else contextlib.nullcontext()
    with no_sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = m.d(augment(fake), y, math.gcd(4, len(real))).float()
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    m.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    m.opt_g.step()
    return loss_d.detach(), loss_g.detach()


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    _, world = rank_and_world()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world
    return values


def broadcast_from_rank0(obj: Any) -> Any:
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_checkpoint(m: Models, base: Checkpoint, class_names: list[str], state: dict) -> Checkpoint:
    return Checkpoint(
        model=base.model,
        class_names=class_names,
        generator=m.g_plain.state_dict(),
        discriminator=m.d_plain.state_dict(),
        state=state,
        optimizer={"g": m.opt_g.state_dict(), "d": m.opt_d.state_dict()},
    )


def resume_state(m: Models, resume_from: Path | None) -> int:
    """Restore weights and optimizers from a checkpoint of this trial; returns its step."""
    if resume_from is None:
        return 0
    ckpt = load_checkpoint(resume_from, with_optimizer=True)
    m.g_plain.load_state_dict(ckpt.generator)
    m.d_plain.load_state_dict(ckpt.discriminator)
    if ckpt.optimizer:
        m.opt_g.load_state_dict(ckpt.optimizer["g"])
        m.opt_d.load_state_dict(ckpt.optimizer["d"])
    return int(ckpt.state.get("step", 0))


def run_trial(
    cfg: TrialConfig,
    base: Checkpoint,
    data: LabeledImages,
    out_dir: Path,
    report: Report,
    resume_from: Path | None = None,
    log: TrialLog | None = None,
    run_id: str = "",
) -> TrialResult:
    """Train from `base` on `data`; checkpoints go under `out_dir`. `log` (rank 0) gets
    TensorBoard scalars and sample grids at each evaluation."""
    rank, _ = rank_and_world()
    device = pick_device()
    data.require_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)  # identical initial noise draws; DDP syncs weights anyway
    m = build_models(cfg, base, device)
    start = resume_state(m, resume_from)
    evaluator = (
        Evaluator(
            data, cfg.eval_samples, cfg.feature_extractor, cfg.inception_weights, device=device
        )
        if rank == 0
        else None
    )
    torch.manual_seed(cfg.seed * 1000 + rank + start)
    batches = sample_batches(data, cfg.batch_size, seed=cfg.seed * 1000 + rank + start)
    result = TrialResult(status="completed", step=start)
    hparams = cfg.model_dump()
    high_collapse = 0
    window, window_steps = torch.zeros(2, device=device), 0
    t0 = time.perf_counter()

    def evaluate_and_report(step: int, losses: dict[str, float]) -> str:
        """Rank 0 scores and maybe checkpoints; every rank reports. Returns a stop reason."""
        nonlocal high_collapse
        metrics, ckpt_dir, stop = None, None, ""
        if rank == 0:
            scores = evaluator.evaluate(m.g_plain).scalars()
            metrics = {"step": step, **losses, **scores}
            metrics["objective"] = objective(metrics["fid"], metrics["collapse"])
            metrics["elapsed_s"] = time.perf_counter() - t0
            if cfg.collapse_stop is not None and metrics["collapse"] > cfg.collapse_stop:
                high_collapse += 1
            else:
                high_collapse = 0
            if high_collapse >= cfg.collapse_patience:
                stop = (
                    f"collapse {metrics['collapse']:.3f} > {cfg.collapse_stop} "
                    f"for {high_collapse} evaluations"
                )
            metrics["trial_status"] = (
                "collapsed" if stop else "completed" if step == cfg.steps else "running"
            )
            metrics["stop_reason"] = stop
            if log is not None:
                log.evaluation(step, metrics, evaluator.sample_grid(m.g_plain))
            if step > start and (step % cfg.checkpoint_interval == 0 or step == cfg.steps or stop):
                state = {"step": step, "run_id": run_id, "hparams": hparams, "metrics": metrics}
                ckpt = make_checkpoint(m, base, data.class_names, state)
                ckpt_dir = save_checkpoint(ckpt, out_dir / "checkpoints" / f"step-{step:06d}")
            record(result, metrics, ckpt_dir)
        metrics, stop = broadcast_from_rank0((metrics, stop))
        report(metrics, ckpt_dir)
        return stop

    if cfg.eval_at_start and start == 0:
        evaluate_and_report(0, {"loss_d": math.nan, "loss_g": math.nan})
    for step in range(start + 1, cfg.steps + 1):
        real, labels = next(batches)
        loss_d, loss_g = train_step(m, real.to(device), labels.to(device), cfg, data.num_classes)
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
            # inf objective keeps schedulers that require the metric satisfied
            report(
                {
                    "step": step,
                    **losses,
                    "fid": math.inf,
                    "objective": math.inf,
                    "trial_status": "diverged",
                    "stop_reason": result.reason,
                },
                None,
            )
            break
        if due_eval:
            stop = evaluate_and_report(step, losses)
            if stop:
                result.status, result.reason = "collapsed", stop
                break
    return result


def record(result: TrialResult, metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
    result.history.append(metrics)
    if ckpt_dir is not None and (
        result.best is None or metrics["objective"] < result.best["objective"]
    ):
        result.best, result.best_checkpoint = metrics, ckpt_dir
