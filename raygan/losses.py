"""Adversarial losses on D's logits, by name: adding one is adding one `LOSSES` entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class GanLoss:
    d_real: Callable[[Tensor], Tensor]  # real_logits -> D's loss for calling them real
    d_fake: Callable[[Tensor], Tensor]  # fake_logits -> D's loss for calling them fake
    g: Callable[[Tensor], Tensor]  # fake_logits -> G's loss


def _bce_d_real(real: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(real, torch.ones_like(real))  # mean softplus(-x)


def _bce_d_fake(fake: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))  # mean softplus(x)


def _bce_g(fake: Tensor) -> Tensor:
    # The non-saturating form, -log D(G(z)): its gradient does not vanish while D wins.
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _hinge_d_real(real: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean()


def _hinge_d_fake(fake: Tensor) -> Tensor:
    return F.relu(1.0 + fake).mean()


def _hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


LOSSES: dict[str, GanLoss] = {
    "bce": GanLoss(_bce_d_real, _bce_d_fake, _bce_g),
    "hinge": GanLoss(_hinge_d_real, _hinge_d_fake, _hinge_g),
}


def get_loss(name: str) -> GanLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None


def d_loss(name: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    loss = get_loss(name)
    return loss.d_real(real_logits) + loss.d_fake(fake_logits)


def mismatch_loss(name: str, mismatched_logits: Tensor) -> Tensor:
    """Matching-aware D (Reed et al. 2016): a real image shown with a wrong label is fake. It
    makes D's score depend on the label, which is G's only reason to follow it."""
    return get_loss(name).d_fake(mismatched_logits)


def wrong_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Each label moved to a different class, uniformly among the other classes."""
    shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + shift) % num_classes


def g_loss(name: str, fake_logits: Tensor) -> Tensor:
    return get_loss(name).g(fake_logits)
