"""What the trial scores see: held-out real demo:target images, changed one way at a time (every
shape filled in one colour; blurred; noised), scored against the 500 training images exactly as
a trial's generator is (classifier features, 500 images). It says which failings of a generator
FID, collapse, class accuracy and the colour FD can register, and so which ones a search can
select against.
Two pixel statistics put generators beside the changed copies: how steep the steepest edges are,
and how much fine grain there is.

    python bench/score_sensitivity.py          # ~1 min on 2 cores
    python bench/score_sensitivity.py --checkpoints runs/demo/export/checkpoint   # and these
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import print_table, write_results
from torchvision.transforms.functional import gaussian_blur

from raygan.checkpoint import load_checkpoint
from raygan.data import load_dataset, to_unit_range
from raygan.demo_domains import make_domain, paint_fills
from raygan.metrics.evaluate import Evaluator
from raygan.models.seam import sample_images

HELD_OUT_SEED = 99  # demo:target's training images use another seed
RED = (230, 40, 45)  # one of the target's fill colours


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return to_unit_range(torch.from_numpy(images).permute(0, 3, 1, 2))


def neighbour_steps(images: torch.Tensor) -> torch.Tensor:
    """|x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]| at every pixel, flattened."""
    down = (images[..., 1:, :-1] - images[..., :-1, :-1]).abs()
    right = (images[..., :-1, 1:] - images[..., :-1, :-1]).abs()
    return (down + right).flatten()


def pixel_statistics(images: torch.Tensor) -> dict[str, float]:
    """edge_p99: the 99th percentile of neighbour steps, how steep the steepest edges are (a
    blur lowers it); grain: their mean, which fine noise raises."""
    steps = neighbour_steps(images)
    return {"edge_p99": float(steps.quantile(0.99)), "grain": float(steps.mean())}


CHANGES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none (held-out real)": lambda x: x,
    "Gaussian blur, sigma 0.5 px": lambda x: gaussian_blur(x, [3, 3], [0.5, 0.5]),
    "Gaussian blur, sigma 0.8 px": lambda x: gaussian_blur(x, [5, 5], [0.8, 0.8]),
    "box blur 3x3": lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    "Gaussian noise, sd 0.1": lambda x: (x + 0.1 * torch.randn_like(x)).clamp(-1, 1),
    "Gaussian noise, sd 0.3": lambda x: (x + 0.3 * torch.randn_like(x)).clamp(-1, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument(
        "--checkpoints", nargs="*", type=Path, default=[], help="also score these generators"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    evaluator = Evaluator(load_dataset("demo:target", resolution=64), args.samples)
    images, labels = make_domain("target", args.samples, seed=HELD_OUT_SEED)
    variants = {name: change(as_tensor(images)) for name, change in CHANGES.items()}
    variants["every fill red"] = as_tensor(paint_fills(images, RED))
    labels = torch.from_numpy(labels)
    for checkpoint in args.checkpoints:
        generated = sample_images(load_checkpoint(checkpoint).build(), labels, seed=1234)
        variants[f"generated: {checkpoint}"] = generated
    rows = []
    for name, fake in variants.items():
        scores = evaluator.score_images(fake, labels)
        rows.append(
            {
                "images": name,
                "fid": scores.fid,
                "collapse": scores.collapse,
                "class_accuracy": scores.class_accuracy,
                "color_fd": scores.color_fd,
                "precision": scores.precision,
                "coverage": scores.coverage,
                **pixel_statistics(fake),
            }
        )
    print_table(rows)
    settings = {
        "samples": args.samples,
        "held_out_seed": HELD_OUT_SEED,
        "checkpoints": [str(c) for c in args.checkpoints],
    }
    print("wrote", write_results("score_sensitivity", settings, rows))


if __name__ == "__main__":
    main()
