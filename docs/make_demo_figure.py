"""Draws docs/demo.png: demo source and target images, and generated samples of the demo base
model before and after fine-tuning (an export directory).

    python docs/make_demo_figure.py runs/demo/export [--out docs/demo.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from raygan.checkpoint import Checkpoint, load_checkpoint
from raygan.data import load_dataset
from raygan.demo import load_base
from raygan.models.seam import sample_images

PER_CLASS = 2


def real_row(spec: str) -> torch.Tensor:
    data = load_dataset(spec, 64)
    picks = [
        i for c in range(10) for i in (data.labels == c).nonzero().flatten()[:PER_CLASS].tolist()
    ]
    return data.batch(torch.tensor(picks))[0].add(1).div(2)


def generated_row(checkpoint: Checkpoint) -> torch.Tensor:
    model = checkpoint.build()
    images = [sample_images(model, torch.full((PER_CLASS,), c), seed=c) for c in range(10)]
    return torch.cat(images).add(1).div(2).clamp(0, 1)


def main(export: str, out: Path) -> None:
    rows = {
        "source domain (photos)": real_row("demo:source:200"),
        "target domain (cartoons, 500 images)": real_row("demo:target"),
        "base model, before fine-tuning": generated_row(load_base("demo")),
        "after the demo search": generated_row(load_checkpoint(export)),
    }
    label_h, width = 18, 10 * PER_CLASS
    grids = [make_grid(images, nrow=width, padding=2, pad_value=1) for images in rows.values()]
    w, h = grids[0].shape[2], grids[0].shape[1]
    canvas = Image.new("RGB", (w, (h + label_h) * len(grids)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, grid) in enumerate(zip(rows, grids, strict=True)):
        top = i * (h + label_h)
        draw.text((4, top + 3), title, fill="black")
        array = grid.mul(255).round().byte().permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(array), (0, top + label_h))
    canvas.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="export directory of the demo search")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("demo.png"))
    args = parser.parse_args()
    main(args.export, args.out)
