"""Step throughput: raygan's `train_step` against a plain PyTorch loop of the same G and D.

Both sides start from the demo base model (`load_base("demo")`, 64x64), see the same batches
(sampled up front, so data loading is out of both measurements) and run on the same device
and thread count. The plain loop is what one would write by hand: Adam, one D step on
[real, fake] with BCE, then one G step. The two sides alternate step by step (ABBA), and the
reported ratio is the median of per-repetition ratios, so load from other processes mostly
cancels.

    python bench/step_throughput.py                       # small: batch 16 and 32, 5 reps
    python bench/step_throughput.py --reps 20 --steps 50  # tighter numbers
    python bench/step_throughput.py --compile             # also raygan's step with compile: true
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from common import median_and_spread, print_table, write_results

from raygan.checkpoint import Checkpoint
from raygan.config import TrialConfig
from raygan.data import load_dataset
from raygan.demo import load_base
from raygan.models.builtin import one_hot
from raygan.models.seam import GanModel
from raygan.recipe import build_recipe
from raygan.trial import build_models, train_step

Step = Callable[[torch.Tensor, torch.Tensor], None]


class PlainLoop:
    """The hand-written baseline: the same G and D called directly, Adam and BCE, nothing else.

    `encode` turns class indices into what G and D take (default: one-hot, as the built-in
    model does); `bf16` runs both under bf16 autocast (default: on CUDA, as `train_step`)."""

    def __init__(
        self,
        model: GanModel,
        cfg: TrialConfig,
        device: torch.device,
        encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        bf16: bool | None = None,
    ) -> None:
        model.to(device)
        self.g, self.d = model.g, model.d
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=betas)
        self.latent_dim = model.latent_dim
        self.encode = encode or (lambda labels: one_hot(labels, model.num_classes))
        n = cfg.batch_size
        self.d_targets = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
        self.g_targets = torch.ones(n, device=device)
        self.bf16 = device.type == "cuda" if bf16 is None else bf16
        self.device = device

    def networks(self) -> list[torch.nn.Module]:
        return [self.g, self.d]

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def __call__(self, real: torch.Tensor, labels: torch.Tensor) -> None:
        y = self.encode(labels)
        z = torch.randn(len(real), self.latent_dim, device=self.device)
        with self.autocast():
            fake = self.g(z, y)
            logits = self.d(torch.cat([real, fake.detach()]), torch.cat([y, y])).reshape(-1)
            loss_d = F.binary_cross_entropy_with_logits(logits.float(), self.d_targets)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        with self.autocast():
            logits = self.d(fake, y).reshape(-1)
            loss_g = F.binary_cross_entropy_with_logits(logits.float(), self.g_targets)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()


class RayganStep:
    """raygan's own path: `build_models`, `build_recipe`, then `train_step`."""

    def __init__(self, base: Checkpoint, cfg: TrialConfig, device: torch.device) -> None:
        self.models = build_models(cfg, base, device)
        self.recipe = build_recipe(cfg, self.models.model)
        self.cfg = cfg
        self.step = 0

    def __call__(self, real: torch.Tensor, labels: torch.Tensor) -> None:
        self.step += 1
        train_step(self.models, [(real, labels)], self.cfg, self.recipe, self.step)

    def networks(self) -> list[torch.nn.Module]:
        return [self.models.g, self.models.d]


def plain_recipe(batch_size: int, **settings: Any) -> TrialConfig:
    """raygan's trial settings for the work the plain loop does: without the matching-aware
    D's extra pass over the real batch (`mismatch_weight`, on by default)."""
    return TrialConfig(batch_size=batch_size, lr=2e-4, beta1=0.5, mismatch_weight=0.0, **settings)


def batch_stream(
    batch_size: int, device: torch.device, channels_last: bool, count: int = 8
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    data = load_dataset("demo:target", 64)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        real, labels = data.batch(torch.randint(len(data), (batch_size,), generator=gen))
        real = real.to(device)
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        batches.append((real, labels.to(device)))
    while True:
        yield from batches


def timed(step: Step, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_rep(
    sides: dict[str, Step], batches: Iterator, steps: int, device: torch.device
) -> dict[str, float]:
    """Images/s of each side over `steps` steps, alternating sides step by step (ABBA...),
    so both sides see the same background load."""
    names = list(sides)
    seconds = dict.fromkeys(names, 0.0)
    batch_size = 0
    for i in range(steps):
        batch = next(batches)
        batch_size = len(batch[0])
        for name in names if i % 2 == 0 else reversed(names):
            seconds[name] += timed(sides[name], batch, device)
    return {name: steps * batch_size / s for name, s in seconds.items()}


def measure(batch_size: int, args: argparse.Namespace, device: torch.device) -> dict:
    base = load_base("demo")
    cfg = plain_recipe(batch_size)
    sides: dict[str, RayganStep | PlainLoop] = {
        "raygan": RayganStep(base, cfg, device),
        "plain": PlainLoop(base.build(), cfg, device),
    }
    if args.compile:
        compiled = cfg.model_copy(update={"compile": True})
        sides["raygan_compiled"] = RayganStep(base, compiled, device)
    if args.channels_last:  # weights keep their Parameter objects, so optimisers still match
        for side in sides.values():
            for net in side.networks():
                net.to(memory_format=torch.channels_last)
    batches = batch_stream(batch_size, device, args.channels_last)
    first_step_s = {name: timed(side, next(batches), device) for name, side in sides.items()}
    interleaved_rep(sides, batches, args.warmup, device)
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.reps):
        for name, value in interleaved_rep(sides, batches, args.steps, device).items():
            samples[name].append(value)
    ratios = [r / p for r, p in zip(samples["raygan"], samples["plain"], strict=True)]
    ratio, low, high = median_and_spread(ratios)
    row = {
        "batch": batch_size,
        "raygan_img_s": median_and_spread(samples["raygan"])[0],
        "plain_img_s": median_and_spread(samples["plain"])[0],
        "ratio_median": ratio,
        "ratio_min": low,
        "ratio_max": high,
        "target": 0.95,
        "samples": samples,
        "first_step_s": first_step_s,
    }
    if args.compile:
        pairs = zip(samples["raygan_compiled"], samples["raygan"], strict=True)
        speedups = [compiled / eager for compiled, eager in pairs]
        row["compiled_img_s"] = median_and_spread(samples["raygan_compiled"])[0]
        row["compiled_speedup"] = median_and_spread(speedups)[0]
        row["compile_s"] = first_step_s["raygan_compiled"] - first_step_s["raygan"]
    return row


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    p.add_argument("--steps", type=int, default=10, help="steps per timed repetition")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (Ray gives a 1-CPU trial 1 thread)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="both sides in channels_last memory format (meant for GPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="add a third side: raygan's step with `compile: true`",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rows = [measure(b, args, device) for b in args.batches]
    print_table(
        rows,
        [
            "batch",
            "raygan_img_s",
            "plain_img_s",
            "ratio_median",
            "ratio_min",
            "ratio_max",
            "target",
            *(["compiled_img_s", "compiled_speedup", "compile_s"] if args.compile else []),
        ],
    )
    settings = {**vars(args), "resolution": 64, "base": "demo"}
    print("wrote", write_results("step_throughput", settings, rows))


if __name__ == "__main__":
    main()
