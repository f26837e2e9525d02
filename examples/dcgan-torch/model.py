"""A DCGAN-style class-conditional GAN, written the way a PyTorch user would write it, with no
raygan imports: raygan fine-tunes it as it is (`adapter: torch`).

G(z, y): z (N, 128) noise and y (N,) integer labels -> (N, 3, 64, 64) images in [-1, 1].
D(x, y): x (N, 3, 64, 64) images and y (N,) integer labels -> (N, 1) logits.

The top-level children are registered in the order raygan freezes them: G's from the latent,
D's from the image. Each class embedding is a child of its own, so raygan finds it as the
class-conditional tensor and never freezes it. Width 16 keeps the pretrained weights under 2 MB.
"""

from __future__ import annotations

import torch
from torch import nn


def up(in_ch: int, out_ch: int) -> nn.Sequential:
    """Double the resolution."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(True),
    )


def down(in_ch: int, out_ch: int) -> nn.Sequential:
    """Halve the resolution."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2, True),
    )


class Generator(nn.Module):
    def __init__(self, num_classes: int, latent_dim: int = 128, width: int = 16) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, 32)
        self.project = nn.Sequential(  # (latent + embedding) x 1 x 1 -> 4 x 4
            nn.ConvTranspose2d(latent_dim + 32, width * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width * 4),
            nn.ReLU(True),
        )
        self.up1 = up(width * 4, width * 4)  # 8 x 8
        self.up2 = up(width * 4, width * 2)  # 16 x 16
        self.up3 = up(width * 2, width)  # 32 x 32
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())  # 64

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.label_embedding(labels)], dim=1)[:, :, None, None]
        return self.to_rgb(self.up3(self.up2(self.up1(self.project(h)))))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.from_rgb = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, True))  # 32
        self.down1 = down(width, width * 2)  # 16
        self.down2 = down(width * 2, width * 4)  # 8
        self.down3 = down(width * 4, width * 4)  # 4
        self.head = nn.Conv2d(width * 4, 1, 4, 1, 0)
        # Projection conditioning (Miyato & Koyama 2018): logit += <embed(y), pooled features>.
        self.class_embedding = nn.Embedding(num_classes, width * 4)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.down3(self.down2(self.down1(self.from_rgb(x))))
        projection = (self.class_embedding(labels) * h.mean(dim=(2, 3))).sum(dim=1, keepdim=True)
        return self.head(h).flatten(1) + projection


def init_weights(module: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(num_classes: int = 10) -> tuple[Generator, Discriminator]:
    g, d = Generator(num_classes), Discriminator(num_classes)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d
