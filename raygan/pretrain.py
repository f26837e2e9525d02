"""`raygan pretrain`: a base model trained from scratch with the trial loop (no freezing)."""

from __future__ import annotations

from pathlib import Path

import torch

from raygan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from raygan.config import PretrainConfig
from raygan.data import load_dataset
from raygan.models.builtin import BuiltinGan, ModelConfig
from raygan.progress import StepProgress, print_report
from raygan.trial import TrialOutput, checkpoint_dir, run_trial


def initial_checkpoint(cfg: PretrainConfig, class_names: list[str]) -> Checkpoint:
    torch.manual_seed(cfg.seed)
    model = ModelConfig(
        num_classes=len(class_names),
        resolution=cfg.resolution,
        channels=cfg.channels,
        class_norm=cfg.class_norm,
        latent_norm=cfg.latent_norm,
    )
    return Checkpoint.of(BuiltinGan(model), class_names, state={"step": 0})


def pretrain(
    cfg: PretrainConfig, export_to: Path | None = None, resume_from: Path | None = None
) -> Path:
    """Train and return the checkpoint with the best objective (copied to `export_to` if given),
    as a search's export picks one: GAN scores swing between evaluations, so the last
    checkpoint can be a bad one."""
    data = load_dataset(cfg.data, cfg.resolution, cfg.skip_corrupt)
    base = initial_checkpoint(cfg, data.class_names)
    out = Path(cfg.output)
    output = TrialOutput(out, print_report, progress=StepProgress(cfg.steps))
    result = run_trial(cfg, base, data, output, resume_from=resume_from)
    best = result.best_checkpoint or checkpoint_dir(out, result.step)
    if export_to is None:
        return best
    ckpt = load_checkpoint(best)
    ckpt.state = {"pretrain": cfg.model_dump(), "metrics": ckpt.state.get("metrics", {})}
    return save_checkpoint(ckpt, export_to)
