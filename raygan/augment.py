"""Differentiable augmentation for small data (DiffAugment, Zhao et al. 2020).

Applied to both real and generated images before D, so D cannot overfit the few real images
while G still receives gradients through the (differentiable) transforms. A policy is either
fixed (`none`, `diffaug[:ops]`) or adaptive (`ada`, Karras et al. 2020), chosen by
`parse_augment`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def brightness_saturation_contrast(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    shift = int(h * ratio + 0.5)
    padded = F.pad(x, [shift] * 4)
    dy = torch.randint(0, 2 * shift + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * shift + 1, (n,), device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    index = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[index, channels, rows, cols]


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    size = int(h * ratio + 0.5)
    cy = torch.randint(0, h + (1 - size % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - size % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor) -> torch.Tensor:
    return cutout(translation(brightness_saturation_contrast(x)))


# In the order they are applied, which is DiffAugment's.
OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "color": brightness_saturation_contrast,
    "translation": translation,
    "cutout": cutout,
}


class AugmentPolicy:
    """Augments every image D sees with `ops` (DiffAugment); no ops means no augmentation.

    Every policy answers the same calls, so the loop never asks which one it has: `apply` to D's
    inputs, `observe(D(real))` and `adjust(n_real)` once per D step, `p` for logging.
    """

    def __init__(self, ops: Sequence[str] = ()) -> None:
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown augment ops {unknown}; valid: {', '.join(OPS)}")
        self.ops = tuple(op for op in OPS if op in ops)

    @property
    def spec(self) -> str:
        """The string `parse_augment` reads back into this policy."""
        if not self.ops:
            return "none"
        return "diffaug" if self.ops == tuple(OPS) else "diffaug:" + ",".join(self.ops)

    @property
    def p(self) -> float:
        """The probability that an op is applied to an image."""
        return 1.0 if self.ops else 0.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = OPS[op](x)
        return x

    def observe(self, real_logits: torch.Tensor) -> None:
        """D's outputs on the real batch: a fixed policy has no use for them."""

    def adjust(self, batch_images_seen: int) -> None:
        """Called once per D step with the number of real images it saw."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, p={self.p:.3f})"


class AdaptiveAugment(AugmentPolicy):
    """ADA (Karras et al. 2020): each op is applied to each image with probability `p`, and
    `p` follows the overfitting heuristic r_t = E[sign(D(real))].

    Every `interval` steps p moves by sign(r_t - target) * images / `speed_images`, where images
    are the real images seen since the last move, and is clamped to [0, 1]. Under DDP the sign
    statistics and image counts are summed over ranks, so every rank holds the same p.

    speed_images: StyleGAN2-ADA lets p cross [0, 1] in 500k images, about 2% of its 25M-image
    runs. A fine-tune of a few thousand steps at batch 16 sees ~50k images in all, so at that
    rate p could never rise far enough to matter. 20k images lets p go 0 -> 1 in ~1250 steps
    of batch 16, while one move (64 images at interval 4) is still only 0.3%.
    """

    def __init__(
        self,
        ops: Sequence[str] = tuple(OPS),
        target: float = 0.6,
        speed_images: int = 20_000,
        interval: int = 4,
        p: float = 0.0,
    ) -> None:
        super().__init__(ops)
        self.target = target
        self.speed_images = speed_images
        self.interval = interval
        self._p = p
        self._reset_stats()

    def _reset_stats(self) -> None:
        # Kept as a tensor on D's device so observing costs no host sync per step.
        self._sign_sum: torch.Tensor | None = None
        self._count = 0
        self._images = 0
        self._steps = 0

    @property
    def spec(self) -> str:
        return "ada" if self.ops == tuple(OPS) else "ada:" + ",".join(self.ops)

    @property
    def p(self) -> float:
        return self._p

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self._p <= 0.0:
            return x
        for op in self.ops:
            # torch.where keeps gradients flowing to G through both branches.
            chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self._p
            x = torch.where(chosen, OPS[op](x), x)
        return x

    def observe(self, real_logits: torch.Tensor) -> None:
        signs = real_logits.detach().float().sign().sum()
        self._sign_sum = signs if self._sign_sum is None else self._sign_sum + signs
        self._count += real_logits.numel()

    def adjust(self, batch_images_seen: int) -> None:
        self._steps += 1
        self._images += batch_images_seen
        if self._steps < self.interval:
            return
        device = self._sign_sum.device if self._sign_sum is not None else torch.device("cpu")
        stats = torch.tensor([0.0, self._count, self._images], dtype=torch.float64, device=device)
        if self._sign_sum is not None:
            stats[0] = self._sign_sum
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        sign_sum, count, images = stats.tolist()
        self._reset_stats()
        if count == 0:
            return
        rt = sign_sum / count
        direction = (rt > self.target) - (rt < self.target)
        self._p = min(max(self._p + direction * images / self.speed_images, 0.0), 1.0)

    def state_dict(self) -> dict[str, Any]:
        # With the unfinished interval's statistics, so a resumed trial moves p exactly when an
        # uninterrupted one would (rank 0's statistics, under DDP).
        sign_sum = 0.0 if self._sign_sum is None else float(self._sign_sum)
        counts = {"count": self._count, "images": self._images, "steps": self._steps}
        return {"p": self._p, "sign_sum": sign_sum, **counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._p = float(state["p"])
        self._reset_stats()
        if state.get("count"):
            self._sign_sum = torch.tensor(float(state["sign_sum"]))
        self._count = int(state.get("count", 0))
        self._images = int(state.get("images", 0))
        self._steps = int(state.get("steps", 0))


_SPECS = "none, diffaug, diffaug:<ops>, ada, ada:<ops>"


def parse_augment(spec: str) -> AugmentPolicy:
    """`none`, `diffaug` (all ops), `diffaug:color,cutout` (a subset), `ada` or `ada:<ops>`."""
    name, has_ops, ops_text = spec.strip().partition(":")
    policies: dict[str, type[AugmentPolicy]] = {"diffaug": AugmentPolicy, "ada": AdaptiveAugment}
    if name == "none":
        if has_ops:
            raise ValueError(f"augment {spec!r}: 'none' takes no ops; valid: {_SPECS}")
        return AugmentPolicy(())
    if name not in policies:
        raise ValueError(f"augment {spec!r}: unknown policy {name!r}; valid: {_SPECS}")
    if not has_ops:
        return policies[name](tuple(OPS))
    ops = [op.strip() for op in ops_text.split(",")]
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise ValueError(
            f"augment {spec!r}: unknown op {bad[0]!r}; valid ops: {', '.join(OPS)} "
            f"(comma-separated, e.g. {name}:color,translation)"
        )
    return policies[name](ops)
