"""`raygan pretrain` exports the checkpoint a search would: the best by objective."""

import json

from raygan.config import PretrainConfig
from raygan.pretrain import pretrain


def test_pretrain_exports_the_checkpoint_with_the_best_objective_not_the_last(tmp_path):
    cfg = PretrainConfig(
        data="demo:target:200",
        resolution=32,
        channels=4,
        steps=6,
        batch_size=8,
        eval_every=2,
        eval_samples=100,
        output=str(tmp_path / "run"),
    )
    exported = pretrain(cfg, export_to=tmp_path / "base")
    history = [
        json.loads((step / "raygan.json").read_text())["state"]["metrics"]
        for step in sorted((tmp_path / "run" / "checkpoints").iterdir())
    ]
    best = min(history, key=lambda metrics: metrics["objective"])
    assert best["step"] < history[-1]["step"], "this run must end past its best checkpoint"
    metrics = json.loads((exported / "raygan.json").read_text())["state"]["metrics"]
    assert metrics["step"] == best["step"]
    assert metrics["objective"] == best["objective"]
