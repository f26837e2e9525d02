"""Tiny user models for the adapter tests, written as a user would (no raygan classes):
32x32 images, BatchNorm, a few channels. `FACTORY` names this file to `adapter: torch`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

# Keras reads its backend once, at import: raygan's is torch, whoever imports Keras first.
os.environ.setdefault("KERAS_BACKEND", "torch")
FACTORY = f"{Path(__file__).resolve()}:build"
LATENT = 16


class TinyG(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, 8)
        self.project = nn.Sequential(
            nn.ConvTranspose2d(LATENT + 8, width * 2, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
        )  # 4x4
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )  # 8x8
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(width, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )  # 16x16
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())  # 32x32

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.label_embedding(labels)], dim=1)[:, :, None, None]
        return self.to_rgb(self.up2(self.up1(self.project(h))))


class TinyD(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.from_rgb = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2))  # 16
        self.down1 = nn.Sequential(
            nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2),
        )  # 8
        self.down2 = nn.Sequential(
            nn.Conv2d(width * 2, width * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2),
        )  # 4
        self.head = nn.Conv2d(width * 2, 1, 4)
        self.class_embedding = nn.Embedding(num_classes, width * 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.down2(self.down1(self.from_rgb(x)))
        projection = (self.class_embedding(labels) * h.mean(dim=(2, 3))).sum(1, keepdim=True)
        return self.head(h).flatten(1) + projection  # (N, 1), as DCGAN code returns


def build(num_classes: int = 10, width: int = 4) -> tuple[TinyG, TinyD]:
    return TinyG(num_classes, width), TinyD(num_classes, width)


# ---- factories that break the contract, one way each -------------------------------------


def build_one(num_classes: int = 10) -> TinyG:
    return TinyG(num_classes, 4)


def build_not_modules(num_classes: int = 10) -> tuple[TinyG, str]:
    return TinyG(num_classes, 4), "discriminator"


class _Crop(nn.Module):
    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.g(z, labels)[:, :, :, :16]


class _Scale(nn.Module):
    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.g(z, labels) * 100  # as if tanh were missing


class _TwoLogits(nn.Module):
    def __init__(self, d: nn.Module) -> None:
        super().__init__()
        self.d = d

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.d(x, labels).repeat(1, 2)


def build_wrong_shape(num_classes: int = 10) -> tuple[nn.Module, nn.Module]:
    g, d = build(num_classes)
    return _Crop(g), d


def build_out_of_range(num_classes: int = 10) -> tuple[nn.Module, nn.Module]:
    g, d = build(num_classes)
    return _Scale(g), d


def build_two_logits(num_classes: int = 10) -> tuple[nn.Module, nn.Module]:
    g, d = build(num_classes)
    return g, _TwoLogits(d)


def save_torch_base(path: Path, num_classes: int = 10, width: int = 4, seed: int = 0) -> Path:
    """A plain `torch.save({"generator": ..., "discriminator": ...})`, as a user's script does."""
    torch.manual_seed(seed)
    g, d = build(num_classes, width)
    torch.save({"generator": g.state_dict(), "discriminator": d.state_dict()}, path)
    return path


# ---- Keras: the tutorial CGAN, shrunk ------------------------------------------------------


def import_keras():
    import keras

    return keras


def keras_generator(num_classes: int = 10, width: int = 4, unsafe: bool = False):
    keras = import_keras()
    layers = keras.layers
    noise = keras.Input((LATENT,), name="noise")
    label = keras.Input((num_classes,), name="label")
    x = layers.Concatenate()([noise, label])
    x = layers.Dense(4 * 4 * width * 2, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((4, 4, width * 2))(x)
    for filters in (width, width):  # 8, 16
        x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    if unsafe:  # a Lambda layer is Python code: loading it needs safe_mode=False
        x = layers.Lambda(lambda t: t * 1.0)(x)
    image = layers.Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh")(x)
    return keras.Model([noise, label], image, name="generator")


def keras_discriminator(num_classes: int = 10, width: int = 4):
    keras = import_keras()
    layers = keras.layers
    image = keras.Input((32, 32, 3), name="image")
    label = keras.Input((num_classes,), name="label")
    label_map = layers.Reshape((32, 32, 1))(layers.Dense(32 * 32)(label))
    x = layers.Concatenate()([image, label_map])
    x = layers.Conv2D(width, 4, strides=2, padding="same")(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Dropout(0.3)(x)  # its RNG state must not break loading a checkpoint
    for filters in (width * 2, width * 2):  # 8, 4
        x = layers.Conv2D(filters, 4, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    logit = layers.Dense(1)(layers.Flatten()(x))
    return keras.Model([image, label], logit, name="discriminator")


def save_keras_base(folder: Path, num_classes: int = 10, unsafe: bool = False) -> Path:
    keras = import_keras()
    keras.utils.set_random_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    keras_generator(num_classes, unsafe=unsafe).save(folder / "generator.keras")
    keras_discriminator(num_classes).save(folder / "discriminator.keras")
    return folder
