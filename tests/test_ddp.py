"""Real DDP: two gloo processes on CPU run the trial loop and its train step."""

import os
from pathlib import Path

import torch
import torch.distributed as dist
from aot_eager import without_codegen
from gloo import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

from raygan.checkpoint import load_checkpoint, save_checkpoint
from raygan.config import TrialConfig
from raygan.data import load_dataset, sample_batches
from raygan.recipe import build_recipe
from raygan.trial import TrialOutput, build_models, run_trial, train_step


def flat_weights(m) -> torch.Tensor:
    nets = (m.model.g, m.model.d)
    return torch.cat([p.detach().flatten() for net in nets for p in net.parameters()])


def worker(rank: int, world: int, base_dir: str, out_dir: str, cache: str) -> None:
    os.environ["RAYGAN_CACHE"] = cache
    data = load_dataset("demo:target:200", 32)
    base = load_checkpoint(base_dir)
    cfg = TrialConfig(
        steps=6,
        batch_size=8,
        lr=5e-3,
        freeze_d=1,
        eval_every=3,
        eval_samples=40,
        eval_at_start=False,
        class_norm=True,  # the per-class tables it grows are synchronised like any weight
        seed=3,
    )
    # The whole loop: every rank reports rank 0's metrics at each evaluation.
    reports = []
    run_trial(
        cfg, base, data, TrialOutput(Path(out_dir), lambda metrics, ckpt: reports.append(metrics))
    )
    assert [r["step"] for r in reports] == [3, 6], reports

    # The step itself: ranks see different batches, yet weights stay identical.
    m = build_models(cfg, base, torch.device("cpu"))
    batches = sample_batches(data, cfg.batch_size, seed=rank)
    before = flat_weights(m)
    recipe = build_recipe(cfg, m.model)
    for step in range(1, 6):
        loss_d, _ = train_step(m, [next(batches)], cfg, recipe, step)
    after = flat_weights(m)
    gathered = [torch.empty_like(after) for _ in range(world)]
    dist.all_gather(gathered, after)
    losses = [torch.empty(1) for _ in range(world)]
    dist.all_gather(losses, loss_d.reshape(1))
    if rank == 0:
        torch.save(
            {
                "weights": gathered,
                "losses": losses,
                "moved": float((after - before).abs().max()),
            },
            os.path.join(out_dir, "gathered.pt"),
        )


def test_two_process_ddp_keeps_weights_identical_across_ranks(tiny_base, tmp_path, isolated_cache):
    base_dir = save_checkpoint(tiny_base, tmp_path / "base")
    out = tmp_path / "run"
    out.mkdir()
    run_ranks(worker, 2, str(base_dir), str(out), str(isolated_cache))
    result = torch.load(out / "gathered.pt", weights_only=True)
    rank0, rank1 = result["weights"]
    assert result["moved"] > 0, "training did not change the weights"
    assert not torch.equal(result["losses"][0], result["losses"][1]), "ranks saw the same data"
    assert torch.equal(rank0, rank1)
    assert (out / "checkpoints" / "step-000006" / "raygan.json").exists()


def compiled_worker(rank: int, world: int, base_dir: str, out_dir: str) -> None:
    torch.compile = without_codegen(torch.compile)  # a spawned rank: no monkeypatch
    data = load_dataset("demo:target:200", 32)
    cfg = TrialConfig(batch_size=8, lr=5e-3, compile=True)
    m = build_models(cfg, load_checkpoint(base_dir), torch.device("cpu"))
    assert isinstance(m.ddp_d, DDP) and m.d is not m.ddp_d  # G's update can skip D's all-reduce
    batches = sample_batches(data, cfg.batch_size, seed=rank)
    recipe = build_recipe(cfg, m.model)
    for step in range(1, 4):
        train_step(m, [next(batches)], cfg, recipe, step)
    after = flat_weights(m)
    gathered = [torch.empty_like(after) for _ in range(world)]
    dist.all_gather(gathered, after)
    if rank == 0:
        torch.save({"weights": gathered}, os.path.join(out_dir, "gathered.pt"))


def test_compiled_ddp_training_keeps_weights_identical_across_ranks(tiny_base, tmp_path):
    base_dir = save_checkpoint(tiny_base, tmp_path / "base")
    run_ranks(compiled_worker, 2, str(base_dir), str(tmp_path))
    rank0, rank1 = torch.load(tmp_path / "gathered.pt", weights_only=True)["weights"]
    assert torch.equal(rank0, rank1)
