"""Build the usual tutorial Keras 3 CGAN (noise 128 + one-hot label -> 64x64x3 tanh, and a
conditional discriminator), pretrain it briefly on demo:source ("photos" of 10 shapes), and save
generator.keras / discriminator.keras next to this file: the pretrained model a user brings to
raygan.

Keras runs on its torch backend, where a Keras model is a torch.nn.Module, so the training loop
is plain PyTorch.

    KERAS_BACKEND=torch python examples/keras-cgan/build_and_pretrain.py [--steps 400]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402 - the backend must be chosen before the import
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from keras import layers  # noqa: E402

from raygan.data import load_dataset  # noqa: E402 - only to read the demo images

HERE = Path(__file__).resolve().parent
LATENT_DIM = 128


def dcgan_init() -> keras.initializers.Initializer:
    """DCGAN's N(0, 0.02) kernels, as Keras DCGAN tutorials set them."""
    return keras.initializers.RandomNormal(stddev=0.02)


def build_generator(num_classes: int, width: int = 16) -> keras.Model:
    noise = keras.Input((LATENT_DIM,), name="noise")
    label = keras.Input((num_classes,), name="label")
    x = layers.Concatenate()([noise, label])
    x = layers.Dense(4 * 4 * width * 4, use_bias=False, kernel_initializer=dcgan_init())(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((4, 4, width * 4))(x)
    for filters in (width * 4, width * 2, width):  # 8, 16, 32
        x = layers.Conv2DTranspose(
            filters, 4, strides=2, padding="same", use_bias=False, kernel_initializer=dcgan_init()
        )(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    image = layers.Conv2DTranspose(
        3, 4, strides=2, padding="same", activation="tanh", kernel_initializer=dcgan_init()
    )(x)
    return keras.Model([noise, label], image, name="generator")


def build_discriminator(num_classes: int, width: int = 16) -> keras.Model:
    image = keras.Input((64, 64, 3), name="image")
    label = keras.Input((num_classes,), name="label")
    label_map = layers.Reshape((64, 64, 1))(layers.Dense(64 * 64)(label))
    x = layers.Concatenate()([image, label_map])
    for filters in (width, width * 2, width * 4, width * 4):  # 32, 16, 8, 4
        x = layers.Conv2D(filters, 4, strides=2, padding="same", kernel_initializer=dcgan_init())(x)
        x = layers.LeakyReLU(0.2)(x)
        x = layers.Dropout(0.3)(x)
    logit = layers.Dense(1)(layers.Flatten()(x))
    return keras.Model([image, label], logit, name="discriminator")


def trainable(model: keras.Model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    data = load_dataset("demo:source", 64)
    g, d = build_generator(data.num_classes), build_discriminator(data.num_classes)
    opt_g = torch.optim.Adam(trainable(g), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(trainable(d), lr=2e-4, betas=(0.5, 0.999))
    ones, zeros = torch.ones(args.batch_size, 1), torch.zeros(args.batch_size, 1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        real, labels = data.batch(torch.randint(len(data), (args.batch_size,)))
        real = real.permute(0, 2, 3, 1)  # Keras images are NHWC
        y = F.one_hot(labels, data.num_classes).float()
        fake = g([torch.randn(args.batch_size, LATENT_DIM), y], training=True)

        loss_d = F.binary_cross_entropy_with_logits(
            d([real, y], training=True), ones
        ) + F.binary_cross_entropy_with_logits(d([fake.detach(), y], training=True), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        loss_g = F.binary_cross_entropy_with_logits(d([fake, y], training=True), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if step % 50 == 0:
            elapsed = time.perf_counter() - start
            print(f"step {step}: loss_d {loss_d:.3f} loss_g {loss_g:.3f} ({elapsed:.0f} s)")

    args.out.mkdir(parents=True, exist_ok=True)
    for model, name in ((g, "generator.keras"), (d, "discriminator.keras")):
        model.save(args.out / name)
        print(f"saved {args.out / name} ({(args.out / name).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
