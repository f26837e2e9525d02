"""The user-style DCGAN CGAN that bench/gpu.py trains through raygan's `torch` adapter, the way a
user brings their own modules (`factory: bench/user_dcgan.py:build`).

It is examples/dcgan-torch/model.py at a chosen width (the example pretrains at 16, GPUs want
64). Where that example is absent the same network is defined here, so the benchmark does not
depend on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raygan.models.torch_user import load_factory

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dcgan-torch" / "model.py"


def build(num_classes: int, width: int = 64) -> tuple[nn.Module, nn.Module]:
    """(G, D) with DCGAN's initialisation: G(z (N, 128), labels) -> (N, 3, 64, 64) images,
    D(images, labels) -> (N, 1) logits."""
    if EXAMPLE.exists():
        generator, discriminator, init = (
            load_factory(f"{EXAMPLE}:{name}")
            for name in ("Generator", "Discriminator", "init_weights")
        )
    else:
        generator, discriminator, init = Generator, Discriminator, init_weights
    g, d = generator(num_classes, width=width), discriminator(num_classes, width=width)
    g.apply(init)
    d.apply(init)
    return g, d


# ---- the fallback: examples/dcgan-torch/model.py's network -----------------------------------


def up(in_ch: int, out_ch: int, stride: int = 2, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, 4, stride, padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(True),
    )


def down(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2, True),
    )


class Generator(nn.Module):
    def __init__(self, num_classes: int, latent_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, 32)
        self.project = up(latent_dim + 32, width * 4, stride=1, padding=0)  # 1 -> 4
        self.up1 = up(width * 4, width * 4)  # 8
        self.up2 = up(width * 4, width * 2)  # 16
        self.up3 = up(width * 2, width)  # 32
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())  # 64

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.label_embedding(labels)], dim=1)[:, :, None, None]
        return self.to_rgb(self.up3(self.up2(self.up1(self.project(h)))))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.from_rgb = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, True))
        self.down1 = down(width, width * 2)  # 16
        self.down2 = down(width * 2, width * 4)  # 8
        self.down3 = down(width * 4, width * 4)  # 4
        self.head = nn.Conv2d(width * 4, 1, 4, 1, 0)
        self.class_embedding = nn.Embedding(num_classes, width * 4)  # projection conditioning

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.down3(self.down2(self.down1(self.from_rgb(x))))
        projection = (self.class_embedding(labels) * h.mean(dim=(2, 3))).sum(dim=1, keepdim=True)
        return self.head(h).flatten(1) + projection


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
