"""The conditional GAN: generator G(z, y) and projection discriminator D(x, y).

Both networks are an ordered sequence of named blocks so that freeze depth is well defined:
G's blocks count from the latent input, D's from the image input (FreezeD). D's head (the
class projection and the logit) is not a block and never freezes, as in stylegan2-ada's
`--freezed`, because the conditioning must adapt to the new domain.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

RESOLUTIONS = (32, 64, 128)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture settings; stored in every checkpoint and compared on load."""

    num_classes: int = 10
    resolution: int = 64
    channels: int = 32
    latent_dim: int = 128

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.channels < 1 or self.latent_dim < 1:
            raise ValueError("channels and latent_dim must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def num_stages(self) -> int:
        """Resolution doublings between the 4x4 base and the output."""
        return int(math.log2(self.resolution // 4))

    def width(self, size: int) -> int:
        """Channels at a feature-map size: wide at low resolution, `channels` at full size."""
        return min(self.channels * self.resolution // size, self.channels * 8)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


class LatentToMap(nn.Module):
    """Maps [z, one-hot y] to the 4x4 base feature map."""

    def __init__(self, in_features: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(in_features, channels * 16)

    def forward(self, zy: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.linear(zy), 0.2).view(-1, self.channels, 4, 4)


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: no running statistics, so a frozen block is truly
    # constant, and DDP needs no SyncBatchNorm.
    return nn.GroupNorm(min(8, channels), channels)


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        _norm(out_ch),
        nn.LeakyReLU(0.2),
    )


def sn(layer: nn.Module) -> nn.Module:
    """Spectral normalisation keeps D Lipschitz, which is what makes BCE training stable."""
    return spectral_norm(layer)


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        sn(nn.Conv2d(in_ch, out_ch, 3, padding=1)),
        nn.LeakyReLU(0.2),
        nn.AvgPool2d(2),
    )


class BlockNet(nn.Module):
    """A network that is a sequence of named blocks, some of which may be frozen."""

    blocks: nn.Sequential
    frozen: tuple[str, ...] = ()

    def train(self, mode: bool = True) -> BlockNet:
        # Frozen blocks stay in eval mode, so even buffers (spectral norm's power-iteration
        # vectors) keep their pretrained values.
        super().train(mode)
        for name in self.frozen:
            self.blocks.get_submodule(name).train(False)
        return self


class Generator(BlockNet):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        blocks["input"] = LatentToMap(cfg.latent_dim + cfg.num_classes, cfg.width(4))
        size = 4
        for i in range(1, cfg.num_stages + 1):
            blocks[f"up{i}"] = up_block(cfg.width(size), cfg.width(size * 2))
            size *= 2
        blocks["to_rgb"] = nn.Sequential(nn.Conv2d(cfg.width(size), 3, 3, padding=1), nn.Tanh())
        self.blocks = nn.Sequential(blocks)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: (N, latent_dim) noise; y: (N, num_classes) one-hot. Returns images in [-1, 1]."""
        return self.blocks(torch.cat([z, y], dim=1))


class Discriminator(BlockNet):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        size = cfg.resolution
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        blocks["from_rgb"] = nn.Sequential(
            sn(nn.Conv2d(3, cfg.width(size), 3, padding=1)), nn.LeakyReLU(0.2)
        )
        for i in range(1, cfg.num_stages + 1):
            blocks[f"down{i}"] = down_block(cfg.width(size), cfg.width(size // 2))
            size //= 2
        self.blocks = nn.Sequential(blocks)
        features = cfg.width(4)
        self.logit = sn(nn.Linear(features + 1, 1))
        # Projection conditioning (Miyato & Koyama 2018): logit += <embed(y), features>.
        self.class_projection = sn(nn.Linear(cfg.num_classes, features, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor, group: int | None = None) -> torch.Tensor:
        """x: (N, 3, R, R) images in [-1, 1]; y: (N, num_classes) one-hot. Returns (N,) logits.

        `group`: minibatch-stddev group size; pass one that divides the real and the fake
        halves when they share a batch, so real and fake statistics never mix."""
        h = self.blocks(x).sum(dim=(2, 3))
        spread = minibatch_stddev(h, group or math.gcd(4, len(h)))
        logit = self.logit(torch.cat([h, spread], dim=1)).squeeze(1)
        return logit + (self.class_projection(y) * h).sum(dim=1)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Per-sample feature spread within its group (Karras et al. 2018): lets D see that a
    batch lacks variety, which is what pushes G away from mode collapse."""
    n, c = h.shape
    grouped = h.view(n // group, group, c)
    spread = grouped.var(dim=1, unbiased=False).add(1e-8).sqrt().mean(dim=1, keepdim=True)
    return spread.repeat_interleave(group, dim=0)


def build_models(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    return Generator(cfg), Discriminator(cfg)


def max_freeze(net: Generator | Discriminator) -> int:
    """Deepest legal freeze: all of D's blocks (its head stays free), all of G's but to_rgb."""
    return len(net.blocks) - (1 if isinstance(net, Generator) else 0)


def freeze_blocks(net: Generator | Discriminator, depth: int) -> list[str]:
    """Freeze the first `depth` blocks; returns their names. Frozen parameters get no gradient,
    so they are left out of the optimizer and provably never change."""
    limit = max_freeze(net)
    if not 0 <= depth <= limit:
        kind = type(net).__name__
        raise ValueError(f"freeze depth for {kind} must be in [0, {limit}], got {depth}")
    names = list(net.blocks._modules)[:depth]
    for name in names:
        net.blocks.get_submodule(name).requires_grad_(False)
    net.frozen = tuple(names)
    net.train(net.training)
    return names


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]
