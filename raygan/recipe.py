"""The fine-tuning recipe of one trial: loss, augmentation, generator EMA, R1, LeCam and the pull
toward the pretrained weights, with the running state each keeps (saved with checkpoints).

Every piece talks to the model seam only, so it works for every adapter. The default
TrialConfig turns them all off, which is the plain BCE recipe; the matching-aware D
(`mismatch_weight`, in `trial.d_update`) is the one default on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from raygan.augment import AugmentPolicy, parse_augment
from raygan.config import TrialConfig
from raygan.ema import GeneratorEMA
from raygan.models.seam import GanModel
from raygan.regularizers import Anchor, LeCam, lazy_r1_weight, norm_affine_names, r1_penalty

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    augment: AugmentPolicy
    ema: GeneratorEMA | None
    lecam: LeCam | None
    anchors: dict[str, Anchor]  # per net; empty when anchor_weight is 0
    r1_last: float | None = None  # the last lazy R1 penalty, for logging

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"augment": self.augment.state_dict()}
        if self.lecam is not None:
            state["lecam"] = self.lecam.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.augment.load_state_dict(state.get("augment", {}))
        if self.lecam is not None and "lecam" in state:
            self.lecam.load_state_dict(state["lecam"])

    def signals(self) -> dict[str, float]:
        """What TensorBoard shows of the recipe's own state."""
        out = {"ada_p": self.augment.p} if self.augment.spec.startswith("ada") else {}
        if self.lecam is not None:
            out.update(lecam_ema_real=self.lecam.ema_real, lecam_ema_fake=self.lecam.ema_fake)
        if self.r1_last is not None:
            out["r1"] = self.r1_last
        return out


def restrict_to_norm_affine(model: GanModel) -> None:
    """Noguchi & Harada 2019: train only normalisation scale/shift and the class-conditional
    tensors. A net without normalisation layers is left as it is (and said so)."""
    conditional = {(t.net, t.name) for t in model.conditional_tensors()}
    for net in ("generator", "discriminator"):
        module = model.net(net)
        keep = set(norm_affine_names(module))
        if not keep:
            log.warning(
                "norm_affine_only: the %s has no normalisation layers; it trains as is", net
            )
            continue
        for name, p in module.named_parameters():
            if name not in keep and (net, name) not in conditional:
                p.requires_grad_(False)


def build_recipe(cfg: TrialConfig, model: GanModel) -> Recipe:
    """Call once the pretrained weights are loaded and frozen: anchors and EMA start there."""
    anchors = {}
    if cfg.anchor_weight > 0:
        anchors = {
            net: Anchor((n, p) for n, p in model.net(net).named_parameters() if p.requires_grad)
            for net in ("generator", "discriminator")
        }
    return Recipe(
        augment=parse_augment(cfg.augment),
        ema=GeneratorEMA(model.g, cfg.ema_decay, cfg.ema_start) if cfg.ema_decay else None,
        lecam=LeCam() if cfg.lecam_weight > 0 else None,
        anchors=anchors,
    )


def anchor_penalty(recipe: Recipe, model: GanModel, net: str) -> torch.Tensor | None:
    anchor = recipe.anchors.get(net)
    if anchor is None:
        return None
    named = [(n, p) for n, p in model.net(net).named_parameters() if n in anchor.reference]
    return anchor.penalty(named)


def r1_step(
    model: GanModel,
    d_opt: torch.optim.Optimizer,
    real: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrialConfig,
    recipe: Recipe,
) -> float:
    """A lazy R1 update on the plain D (DDP does not support double backward): gradients are
    averaged across ranks by hand. Returns the penalty."""
    real = real.detach().requires_grad_(True)
    logits = model.discriminate(recipe.augment.apply(real), labels).float()
    penalty = r1_penalty(logits, real)
    d_opt.zero_grad(set_to_none=True)
    (penalty * lazy_r1_weight(cfg.r1_gamma, cfg.r1_every)).backward()
    average_gradients([p for p in model.d.parameters() if p.requires_grad])
    d_opt.step()
    return float(penalty.detach())


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
