"""Regularisers that keep a fine-tune stable and near its source model.

R1 and LeCam stop D from overfitting the few real images; the anchor (L2-SP) and the
normalisation-only mode keep the generator close to the pretrained one (few-shot transfer).
Each returns an unweighted term: the training loop owns the weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """E_x ||grad_x D(x)||^2 over the real batch (Mescheder et al. 2018), differentiable.

    `real_images` must have `requires_grad=True` before D (and any augmentation) sees them, and
    `real_logits` must come from that forward pass. The caller scales the term: D's loss gets
    `gamma / 2 * r1_penalty(...)`. StyleGAN2 applies it lazily, on one step in `interval` and
    multiplied by `interval` so the average strength is unchanged: `lazy_r1_weight` gives that
    factor.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def lazy_r1_weight(gamma: float, interval: int) -> float:
    """The factor for `r1_penalty` on the steps where it runs, once every `interval` steps."""
    return gamma / 2 * interval


class LeCam:
    """LeCam regulariser (Tseng et al. 2021): keeps D's real and fake outputs near each other's
    moving averages, which bounds how far D can separate a few real images from the fakes.

    Per D step: `update(real, fake)` then `penalty(real, fake)`, the order of the paper's code
    (google/lecam-gan). Before `start` updates the averages just track the latest batch means,
    as the paper's `start_itr` does; the averages are plain floats on each rank, and only D's
    gradients (which DDP averages) depend on them.
    """

    def __init__(self, decay: float = 0.99, start: int = 0) -> None:
        self.decay = decay
        self.start = start
        self.ema_real = 0.0
        self.ema_fake = 0.0
        self.updates = 0

    def update(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        decay = self.decay if self.updates >= self.start else 0.0
        # One device sync for both means.
        means = torch.stack(
            [real_logits.detach().float().mean(), fake_logits.detach().float().mean()]
        )
        real, fake = means.tolist()
        self.ema_real = decay * self.ema_real + (1 - decay) * real
        self.ema_fake = decay * self.ema_fake + (1 - decay) * fake
        self.updates += 1

    def penalty(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return (real_logits - self.ema_fake).relu().square().mean() + (
            self.ema_real - fake_logits
        ).relu().square().mean()

    def state_dict(self) -> dict[str, Any]:
        return {"ema_real": self.ema_real, "ema_fake": self.ema_fake, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema_real = float(state["ema_real"])
        self.ema_fake = float(state["ema_fake"])
        self.updates = int(state["updates"])


class Anchor:
    """L2-SP (Li et al. 2018): the squared distance of the trained tensors from their values at
    the start of fine-tuning, so a few hundred images cannot pull the model far from its source.

    Build it from the trainable named parameters once the pretrained weights are loaded, and
    pass the same names to `penalty` (from the plain module: a DDP wrapper adds `module.`).
    """

    def __init__(self, named_params: Iterable[tuple[str, Tensor]]) -> None:
        self.reference = {name: p.detach().clone() for name, p in named_params}

    def penalty(self, named_params: Iterable[tuple[str, Tensor]]) -> Tensor:
        current = dict(named_params)
        missing = self.reference.keys() - current.keys()
        if missing:
            # Silently skipping them would turn the penalty into a constant zero.
            raise KeyError(f"anchored parameters not given: {sorted(missing)[:5]}")
        terms = [(current[n] - p0).square().sum() for n, p0 in self.reference.items()]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()


_TORCH_NORMS = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
)
_KERAS_NORMS = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}


def norm_affine_names(net: nn.Module) -> list[str]:
    """Names, as `net.named_parameters()` gives them, of the normalisation layers' scale and
    shift: the only tensors trained in Noguchi & Harada 2019's few-shot mode.

    Keras models on the torch backend are recognised by their layers' class names and
    `gamma`/`beta` variables, so Keras is never imported here.
    """
    affine: set[int] = set()
    for module in net.modules():
        if isinstance(module, _TORCH_NORMS):
            # weight and bias only, not a conditional norm's extra tables: its class tables are
            # trained as class-conditional tensors, and its z tables (latent_norm) stay frozen.
            affine.update(
                id(p) for p in (module.weight, getattr(module, "bias", None)) if p is not None
            )
    keras_layers = getattr(net, "_flatten_layers", None)
    if callable(keras_layers):
        for layer in keras_layers(include_self=True, recursive=True):
            if type(layer).__name__ in _KERAS_NORMS:
                for var in (getattr(layer, "gamma", None), getattr(layer, "beta", None)):
                    if var is not None:
                        affine.add(id(getattr(var, "value", var)))
    # Matched by identity, so shared tensors and wrapper prefixes get the names torch reports.
    return [name for name, p in net.named_parameters() if id(p) in affine]
