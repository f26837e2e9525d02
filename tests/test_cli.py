"""The command line: progress lines for a real run, one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from raygan.checkpoint import save_checkpoint
from raygan.cli import main


def test_finetune_prints_a_progress_line_per_evaluation_and_saves_checkpoints(
    tiny_base, tmp_path, capsys
):
    base = save_checkpoint(tiny_base, tmp_path / "base")
    out = tmp_path / "run"
    code = main(
        [
            "finetune",
            "--set",
            f"base={base}",
            "--set",
            "data=demo:target:200",
            "--set",
            f"output={out}",
            "--set",
            "steps=4",
            "--set",
            "eval_every=2",
            "--set",
            "batch_size=8",
            "--set",
            "eval_samples=40",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    progress = [line for line in printed.splitlines() if line.startswith("step")]
    assert [line.split("|")[0].split()[1] for line in progress] == ["0", "2", "4"]
    assert "fid" in progress[-1] and "collapse" in progress[-1]
    assert (out / "checkpoints" / "step-000004" / "generator.safetensors").exists()
    assert (out / "summary.json").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--set", "lr=-1"], "field 'lr'"),
        (
            ["finetune", "--set", "base=/nonexistent/ckpt"],
            "checkpoint not found: /nonexistent/ckpt",
        ),
        (["finetune", "--set", "data=/nonexistent/data"], "data set not found: /nonexistent/data"),
        (["tune", "/nonexistent/search.yaml"], "config file not found"),
        (["prepare", "/nonexistent", "out.parquet"], "data set not found"),
        (["export", "/nonexistent/exp", "out"], "experiment directory not found"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "raygan", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raygan: error:") and message in lines[0], (
        proc.stderr
    )


def test_sample_rejects_unknown_class_with_the_known_ones(tiny_base, tmp_path, capsys):
    export = save_checkpoint(tiny_base, tmp_path / "export")
    assert main(["sample", str(export), "--class", "dragon", "-o", str(tmp_path / "x.png")]) == 2
    assert "unknown class 'dragon'" in capsys.readouterr().err
    assert (
        main(["sample", str(export), "--class", "star", "-n", "4", "-o", str(tmp_path / "x.png")])
        == 0
    )
    assert (tmp_path / "x.png").stat().st_size > 0
