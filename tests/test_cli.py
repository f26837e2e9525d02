"""The command line: progress lines for a real run, one-line errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from raygan.checkpoint import save_checkpoint
from raygan.cli import check_resume_args, main

REPO = Path(__file__).resolve().parents[1]


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
            "base not found: /nonexistent/ckpt",
        ),
        (
            ["finetune", "--set", "data=demo:target:200", "--resume", "/nonexistent/step-000100"],
            "--resume: checkpoint not found: /nonexistent/step-000100",
        ),
        (["finetune", "--set", "data=/nonexistent/data"], "data set not found: /nonexistent/data"),
        (["tune", "/nonexistent/search.yaml"], "config file not found"),
        (["prepare", "/nonexistent", "out.parquet"], "data set not found"),
        (["export", "/nonexistent/exp", "out"], "experiment directory not found"),
        (
            ["export", "/nonexistent/exp", "out", "--min-class-accuracy", "70"],
            "min_class_accuracy 70: not a class accuracy in [0, 1]",
        ),
        (
            ["tune", "search_spaces/demo.yaml", "--set", "num_trial=3"],
            "search_spaces/demo.yaml with --set num_trial=3: unknown field 'num_trial'",
        ),
        (["tune", "search_spaces/demo.yaml", "--name", "a/b"], "--name: field 'name'"),
        (["tune", "search_spaces/demo.yaml", "--name", ".."], "not a directory of its own"),
        (
            ["tune", "search_spaces/demo.yaml", "--resume", "runs/demo", "--name", "other"],
            "--resume continues the experiment where it is",
        ),
        (
            ["tune", "search_spaces/demo.yaml", "--resume", "/a/demo", "--storage", "/b"],
            "--resume /a/demo is not under --storage /b",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "raygan", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
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


@pytest.mark.parametrize(
    "resume, storage",
    [
        ("/mnt/raygan/experiments/demo", "/mnt/raygan/experiments"),  # the documented resubmit
        ("/mnt/raygan/experiments/demo/", "/mnt/raygan/experiments/"),
        ("s3://bucket/runs/demo", "s3://bucket/runs"),
        ("runs/demo", None),
    ],
)
def test_resume_accepts_the_storage_that_holds_it(resume, storage):
    check_resume_args(resume, None, storage)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "0"], "-n 0: the number of images must be at least 1"),
        (["-o", "samples.txt"], "samples.txt: not an image file name"),
    ],
)
def test_sample_refuses_a_bad_count_or_file_name_in_one_line(
    tiny_base, tmp_path, capsys, args, message
):
    export = save_checkpoint(tiny_base, tmp_path / "export")
    assert main(["sample", str(export), "--class", "star", *args]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line


def test_inspect_lists_freeze_groups_conditional_tensors_and_runs_g_then_d(
    tiny_base, tmp_path, capsys
):
    base = save_checkpoint(tiny_base, tmp_path / "base")
    code = main(["inspect", "--set", f"base={base}", "--set", "data=demo:target:200"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "adapter: raygan" in printed
    assert "freeze_g in [0, 4]" in printed and "freeze_d in [0, 4]" in printed
    assert "generator.blocks.input.linear.weight  dim 1, start 128" in printed
    assert "G -> D on random input: ok (images (4, 3, 32, 32)" in printed


def test_inspect_of_a_broken_user_model_is_one_line_exit_2(tmp_path, capsys):
    import torch

    factory = tmp_path / "broken.py"
    factory.write_text("def build(num_classes=10):\n    return 'not modules'\n")
    weights = tmp_path / "gan.pt"
    torch.save({"generator": {}, "discriminator": {}}, weights)
    args = ["--set", "model.adapter=torch", "--set", f"model.factory={factory}:build"]
    code = main(["inspect", *args, "--set", f"base={weights}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "must return (G, D), two torch.nn.Modules; got str" in err[0]
