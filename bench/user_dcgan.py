"""The user-style DCGAN CGAN that bench/gpu.py trains through raygan's `torch` adapter, the way a
user brings their own modules (`factory: bench/user_dcgan.py:build`): the network of
examples/dcgan-torch/model.py at a GPU-sized width (the example pretrains at 16).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from raygan.models.torch_user import load_factory

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dcgan-torch" / "model.py"


def build(num_classes: int, width: int = 64) -> tuple[nn.Module, nn.Module]:
    """(G, D) with DCGAN's initialisation: G(z (N, 128), labels) -> (N, 3, 64, 64) images,
    D(images, labels) -> (N, 1) logits."""
    generator, discriminator, init = (
        load_factory(f"{EXAMPLE}:{name}") for name in ("Generator", "Discriminator", "init_weights")
    )
    g, d = generator(num_classes, width=width), discriminator(num_classes, width=width)
    g.apply(init)
    d.apply(init)
    return g, d
