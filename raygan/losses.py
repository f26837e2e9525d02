"""Adversarial losses on D's logits, by name: adding one is adding one `LOSSES` entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class GanLoss:
    d: Callable[[Tensor, Tensor], Tensor]  # (real_logits, fake_logits) -> D's loss
    g: Callable[[Tensor], Tensor]  # fake_logits -> G's loss


def _bce_d(real: Tensor, fake: Tensor) -> Tensor:
    # Equal to mean(softplus(-real)) + mean(softplus(fake)), computed stably by torch.
    return F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def _bce_g(fake: Tensor) -> Tensor:
    # The non-saturating form, -log D(G(z)): its gradient does not vanish while D wins.
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


LOSSES: dict[str, GanLoss] = {
    "bce": GanLoss(_bce_d, _bce_g),
    "hinge": GanLoss(_hinge_d, _hinge_g),
}


def get_loss(name: str) -> GanLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None


def d_loss(name: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return get_loss(name).d(real_logits, fake_logits)


def g_loss(name: str, fake_logits: Tensor) -> Tensor:
    return get_loss(name).g(fake_logits)
