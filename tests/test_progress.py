"""Long local runs (`raygan pretrain`, `raygan finetune`) say how far they are between
evaluations."""

from raygan.config import TrialConfig
from raygan.progress import StepProgress
from raygan.trial import TrialOutput, run_trial


def test_step_progress_prints_the_rate_and_time_left_after_its_first_window(capsys):
    progress = StepProgress(total=100, every_s=0.0)
    progress(10, {"loss_d": 1.3, "loss_g": 0.7})
    assert capsys.readouterr().out == "", "the first window only starts the clock"
    progress(20, {"loss_d": 1.25, "loss_g": 0.75})
    line = capsys.readouterr().out
    assert line.startswith("step     20/100 | loss_d 1.25 | loss_g 0.75 | ")
    assert "steps/s | ~" in line or "s/step | ~" in line
    assert line.endswith(" min left\n")


def test_step_progress_stays_quiet_within_its_interval(capsys):
    progress = StepProgress(total=100, every_s=3600.0)
    for step in (10, 20, 30):
        progress(step, {"loss_d": 1.0, "loss_g": 1.0})
    assert capsys.readouterr().out == ""


def test_a_trial_reports_progress_between_evaluations_only(tiny_base, tiny_data, tmp_path):
    cfg = TrialConfig(steps=30, batch_size=8, eval_every=20, eval_samples=50, eval_at_start=False)
    calls = []
    run_trial(
        cfg,
        tiny_base,
        tiny_data,
        TrialOutput(
            tmp_path,
            lambda metrics, checkpoint: None,
            progress=lambda step, losses: calls.append((step, sorted(losses))),
        ),
    )
    assert calls == [(10, ["loss_d", "loss_g"])], "steps 20 and 30 evaluate instead"
