"""An exponential moving average of the generator's weights.

Every strong GAN code base (StyleGAN2-ADA's G_ema, BigGAN, StudioGAN, mmagic) evaluates and
ships the averaged generator: it smooths out the oscillation of adversarial training, which
matters most on the small, noisy batches of a fine-tune.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


def _weights_and_statistics(net: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """The tensors to average and the tensors to copy, in an order two copies share."""
    keras_weights = getattr(net, "weights", None)
    if callable(getattr(net, "_flatten_layers", None)) and keras_weights is not None:
        # A Keras model on the torch backend keeps its moving statistics as non-trainable
        # variables rather than buffers, and a deep copy renames its torch parameters, so pair
        # the variables in the order Keras lists them. Keras is duck-typed, never imported.
        return (
            [v.value for v in keras_weights if v.trainable],
            [v.value for v in keras_weights if not v.trainable],
        )
    return list(net.parameters()), list(net.buffers())


class GeneratorEMA:
    """`module` is a frozen copy of the generator whose weights trail the trained ones.

    Under DDP every rank holds identical EMA weights without communication: the parameters it
    averages are already identical after each all-reduced step, and DDP broadcasts buffers from
    rank 0. Pass the plain module (`ddp.module`), not the DDP wrapper.
    """

    def __init__(self, net: nn.Module, decay: float, start: int = 0) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.start = start
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """Fold `net`'s weights in after optimiser step `step`.

        Before `start` the average just follows the weights: early fine-tuning steps move far
        from the pretrained point, and averaging them in would drag the EMA back toward it.
        """
        ema_weights, ema_stats = _weights_and_statistics(self.module)
        weights, stats = _weights_and_statistics(net)
        if len(ema_weights) != len(weights) or len(ema_stats) != len(stats):
            raise ValueError(
                f"net has {len(weights)} weights and {len(stats)} statistics, the EMA copy "
                f"{len(ema_weights)} and {len(ema_stats)}: pass the same architecture, "
                "unwrapped from DDP"
            )
        pairs = list(zip(ema_weights, weights, strict=True))
        averaged = [(e, w) for e, w in pairs if e.is_floating_point()]
        # Running statistics are not weights to average: the EMA generator must normalise with
        # the statistics its current weights produce, so they are copied as they are.
        copied = [(e, w) for e, w in pairs if not e.is_floating_point()]
        copied += zip(ema_stats, stats, strict=True)
        if step < self.start:
            copied += averaged
        elif averaged:
            # lerp(ema, w, 1 - decay) = decay * ema + (1 - decay) * w, fused per tensor group.
            torch._foreach_lerp_([e for e, _ in averaged], [w for _, w in averaged], 1 - self.decay)
        for e, w in copied:
            e.copy_(w)

    @torch.no_grad()
    def copy_to(self, net: nn.Module) -> None:
        """Write the averaged weights into `net`, a model of the same architecture (to export)."""
        src_weights, src_stats = _weights_and_statistics(self.module)
        dst_weights, dst_stats = _weights_and_statistics(net)
        for dst, src in zip([*dst_weights, *dst_stats], [*src_weights, *src_stats], strict=True):
            dst.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
