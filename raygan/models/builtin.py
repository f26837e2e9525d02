"""raygan's built-in conditional GAN: generator G(z, y) and projection discriminator D(x, y),
and its adapter to the model seam.

Both networks are an ordered sequence of named blocks so that freeze depth is well defined:
G's blocks count from the latent input, D's from the image input (FreezeD). D's head (the
class projection and the logit) is not a block and never freezes, as in stylegan2-ada's
`--freezed`, because the conditioning must adapt to the new domain.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm  # fp32 subclass below

from raygan.models.seam import ConditionalTensor, FreezeGroup, GanModel, export_program

RESOLUTIONS = (32, 64, 128)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture settings; stored in every checkpoint and compared on load."""

    num_classes: int = 10
    resolution: int = 64
    channels: int = 32
    latent_dim: int = 128
    class_norm: bool = False  # G's norms add a per-class scale and shift (ClassGroupNorm)
    latent_norm: bool = False  # ...and a per-sample one from z (needs class_norm)

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.channels < 1 or self.latent_dim < 1:
            raise ValueError("channels and latent_dim must be positive")
        if self.latent_norm and not self.class_norm:
            raise ValueError(
                "latent_norm needs class_norm: it adds z's scale and shift to its norms"
            )

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


def _norm(channels: int, num_classes: int | None = None, latent_dim: int = 0) -> nn.GroupNorm:
    """`num_classes`: with a per-class scale and shift (`ModelConfig.class_norm`); `latent_dim`:
    and a per-sample one from z (`ModelConfig.latent_norm`)."""
    # GroupNorm rather than BatchNorm: no running statistics, so a frozen block is truly
    # constant, and DDP needs no SyncBatchNorm.
    groups = min(8, channels)
    if num_classes:
        return ClassGroupNorm(groups, channels, num_classes, latent_dim)
    return nn.GroupNorm(groups, channels)


class ClassGroupNorm(nn.GroupNorm):
    """GroupNorm with a per-class scale and shift on top, as BigGAN's conditional BatchNorm,
    and with `latent_dim`, a per-sample one from z as well. All start at zero, so a pretrained
    G is unchanged until training moves them. The class (and z) then reach every resolution,
    not only the latent input."""

    def __init__(
        self, num_groups: int, num_channels: int, num_classes: int, latent_dim: int = 0
    ) -> None:
        super().__init__(num_groups, num_channels)
        self.class_gain = nn.Parameter(torch.zeros(num_classes, num_channels))
        self.class_bias = nn.Parameter(torch.zeros(num_classes, num_channels))
        # Normalising each sample's groups erases what z put in their means and scales, and the
        # class tables put back only the class's: G then draws one picture per class. z's own
        # tables put the sample's back at every resolution, as BigGAN feeds z to every norm.
        self.latent_gain = (
            nn.Parameter(torch.zeros(latent_dim, num_channels)) if latent_dim else None
        )
        self.latent_bias = (
            nn.Parameter(torch.zeros(latent_dim, num_channels)) if latent_dim else None
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gain, bias = y @ self.class_gain, y @ self.class_bias
        if self.latent_gain is not None:
            gain, bias = gain + z @ self.latent_gain, bias + z @ self.latent_bias
        return super().forward(x) * (1 + gain[:, :, None, None]) + bias[:, :, None, None]


class UpBlock(nn.Sequential):
    """Upsample, conv, norm, activation; the one-hot labels and z go to a `ClassGroupNorm`."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, y, z) if isinstance(layer, ClassGroupNorm) else layer(x)
        return x


def up_block(in_ch: int, out_ch: int, num_classes: int | None, latent_dim: int) -> UpBlock:
    return UpBlock(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        _norm(out_ch, num_classes, latent_dim),
        nn.LeakyReLU(0.2),
    )


class FP32SpectralNorm(_SpectralNorm):
    """Spectral norm whose power iteration runs in fp32 under bf16 autocast: sigma from bf16
    matrix-vector products is off by up to a percent, enough to let D's Lipschitz bound drift."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float())


def sn(layer: nn.Module) -> nn.Module:
    """Spectral normalisation keeps D Lipschitz, which is what makes BCE training stable.
    Same state-dict names as torch's `spectral_norm` (on Conv2d and Linear, dim 0)."""
    parametrize.register_parametrization(layer, "weight", FP32SpectralNorm(layer.weight))
    return layer


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        sn(nn.Conv2d(in_ch, out_ch, 3, padding=1)),
        nn.LeakyReLU(0.2),
        nn.AvgPool2d(2),
    )


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        blocks["input"] = LatentToMap(cfg.latent_dim + cfg.num_classes, cfg.width(4))
        size = 4
        classes = cfg.num_classes if cfg.class_norm else None
        latent = cfg.latent_dim if cfg.latent_norm else 0
        for i in range(1, cfg.num_stages + 1):
            blocks[f"up{i}"] = up_block(cfg.width(size), cfg.width(size * 2), classes, latent)
            size *= 2
        blocks["to_rgb"] = nn.Sequential(nn.Conv2d(cfg.width(size), 3, 3, padding=1), nn.Tanh())
        self.blocks = nn.Sequential(blocks)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: (N, latent_dim) noise; y: (N, num_classes) one-hot. Returns images in [-1, 1]."""
        h = torch.cat([z, y], dim=1)
        for block in self.blocks:
            h = block(h, y, z) if isinstance(block, UpBlock) else block(h)
        return h


class Discriminator(nn.Module):
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

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, R, R) images in [-1, 1]; y: (N, num_classes) one-hot. Returns (N,) logits."""
        h = self.blocks(x).sum(dim=(2, 3))
        spread = minibatch_stddev(h, stddev_group(len(h)))
        logit = self.logit(torch.cat([h, spread], dim=1)).squeeze(1)
        return logit + (self.class_projection(y) * h).sum(dim=1)


def stddev_group(n: int) -> int:
    """A minibatch-stddev group size that divides both halves of an even batch: the trial loop
    scores real and fake images in one batch, and their statistics must not mix."""
    return math.gcd(4, n // 2) if n % 2 == 0 else 1


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Per-sample feature spread within its group (Karras et al. 2018): lets D see that a
    batch lacks variety, which is what pushes G away from mode collapse."""
    n, c = h.shape
    with torch.autocast(h.device.type, enabled=False):  # a variance of bf16 values is noise
        grouped = h.float().view(n // group, group, c)
        spread = grouped.var(dim=1, unbiased=False).add(1e-8).sqrt().mean(dim=1, keepdim=True)
    return spread.repeat_interleave(group, dim=0)


def build_models(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    return Generator(cfg), Discriminator(cfg)


class BuiltinGan(GanModel):
    """The seam's adapter for raygan's own architecture (`adapter: raygan`)."""

    adapter = "raygan"

    def __init__(self, cfg: ModelConfig) -> None:
        g, d = build_models(cfg)
        super().__init__(g, d, cfg.latent_dim, cfg.num_classes)
        self.cfg = cfg

    @classmethod
    def from_spec(cls, spec: dict[str, Any], num_classes: int) -> BuiltinGan:
        fields = {k: v for k, v in spec.items() if k in ModelConfig.__dataclass_fields__}
        return cls(replace(ModelConfig(**fields), num_classes=num_classes))

    def generate(self, z: torch.Tensor, labels: torch.Tensor, g: Any = None) -> torch.Tensor:
        return (self.g if g is None else g)(z, one_hot(labels, self.num_classes))

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor, d: Any = None) -> torch.Tensor:
        return (self.d if d is None else d)(x, one_hot(labels, self.num_classes))

    def freeze_groups(self, net: str) -> list[FreezeGroup]:
        blocks = self.net(net).blocks
        return [FreezeGroup(name, [module]) for name, module in blocks.named_children()]

    def conditional_tensors(self) -> list[ConditionalTensor]:
        projection = "class_projection.parametrizations.weight"
        class_norms = [
            ConditionalTensor("generator", f"{name}.{table}", 0)
            for name, module in self.g.named_modules()
            if isinstance(module, ClassGroupNorm)
            for table in ("class_gain", "class_bias")
        ]
        return [
            ConditionalTensor("generator", "blocks.input.linear.weight", 1, self.latent_dim),
            *class_norms,
            ConditionalTensor("discriminator", f"{projection}.original", 1),
            ConditionalTensor("discriminator", f"{projection}.0._v", 0),
        ]

    def with_class_norm(self) -> BuiltinGan:
        if self.cfg.class_norm:
            return self
        grown = BuiltinGan(replace(self.cfg, class_norm=True))
        g, d = self.state_dicts()
        # Every tensor as pretrained; the new per-class tables keep their zeros.
        grown.load_state_dicts({**grown.g.state_dict(), **g}, d, "class_norm")
        return grown

    def spec(self) -> dict[str, Any]:
        return {"adapter": self.adapter, **self.cfg.to_dict()}

    def export(self, out: Path) -> list[str]:
        export_program(self, out / "generator.pt2")
        return ["generator.pt2"]
