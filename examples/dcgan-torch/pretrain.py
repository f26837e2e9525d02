"""Pretrain the DCGAN in model.py on demo:source ("photos" of 10 shapes) with a plain PyTorch
loop, and save base.pt = {"generator": state_dict, "discriminator": state_dict} next to this
file: the pretrained model a user brings to raygan.

    python examples/dcgan-torch/pretrain.py [--steps 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import build  # noqa: E402 - model.py sits next to this script

from raygan.data import load_dataset  # noqa: E402 - only to read the demo images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "base.pt")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_dataset("demo:source", 64)
    g, d = build(num_classes=data.num_classes)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(len(data), (args.batch_size,))
        real, labels = data.batch(index)
        fake = g(torch.randn(len(real), 128), labels)

        loss_d = F.binary_cross_entropy_with_logits(
            d(real, labels), torch.ones(len(real), 1)
        ) + F.binary_cross_entropy_with_logits(d(fake.detach(), labels), torch.zeros(len(real), 1))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        loss_g = F.binary_cross_entropy_with_logits(d(fake, labels), torch.ones(len(real), 1))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if step % 50 == 0:
            elapsed = time.perf_counter() - start
            print(f"step {step}: loss_d {loss_d:.3f} loss_g {loss_g:.3f} ({elapsed:.0f} s)")

    torch.save({"generator": g.state_dict(), "discriminator": d.state_dict()}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
