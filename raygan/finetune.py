"""`raygan finetune`: one trial on this machine, without Ray."""

from __future__ import annotations

from pathlib import Path

from raygan.config import FinetuneConfig
from raygan.errors import CheckpointError
from raygan.fsio import write_json_atomic
from raygan.models.pretrained import load_base_and_data
from raygan.progress import StepProgress, print_report
from raygan.tensorboard import TrialLog
from raygan.trial import TrialOutput, TrialResult, run_trial


def finetune(cfg: FinetuneConfig, resume_from: Path | None = None) -> TrialResult:
    if resume_from is not None and not resume_from.exists():
        raise CheckpointError(f"--resume: checkpoint not found: {resume_from}")
    base, data = load_base_and_data(cfg.model, cfg.base, cfg.data, cfg.skip_corrupt)
    data.require_batch(cfg.batch_size)  # before anything is written
    out = Path(cfg.output)
    log = TrialLog(out / "tensorboard", cfg.model_dump())
    try:
        output = TrialOutput(out, print_report, log=log, progress=StepProgress(cfg.steps))
        result = run_trial(cfg, base, data, output, resume_from=resume_from)
    finally:
        log.close()
    summary = {
        "status": result.status,
        "reason": result.reason,
        "step": result.step,
        "best": result.best,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "history": result.history,
        "config": cfg.model_dump(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary, default=float)
    return result
