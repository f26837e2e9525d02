"""bench/gpu.py, issue 12's GPU benchmark, stays runnable: its CPU dry run measures both models
through raygan's step and the plain loop, eager and compiled, and writes the rows to the path it
is given."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_dry_run_writes_step_and_compile_rows_per_model(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,  # about 40 s of it compiles the two models
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["model"], r["batch"], r["precision"]): r for r in result["rows"]}
    assert set(rows) == {("builtin", 4, "fp32"), ("dcgan", 4, "fp32")}
    for row in rows.values():
        assert row["raygan_img_s"] > 0 and row["plain_img_s"] > 0
        assert row["ratio"] > 0 and row["gflop_per_img"] > 0
        assert row["peak_fraction"] == "unknown"  # a CPU has no entry in the peak table
    compiles = {r["model"]: r for r in result["compiles"]}
    assert set(compiles) == {"builtin", "dcgan"}
    for row in compiles.values():
        assert row["eager_img_s"] > 0 and row["compiled_img_s"] > 0 and row["compile_s"] > 0
    assert result["settings"]["dry_run"] is True
    assert result["searches"] == []  # Ray only with --with-ray
    assert result["errors"] == []


def test_a_failing_gpu_benchmark_row_is_recorded_and_the_rest_are_still_saved(
    tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from gpu import Recorder

    def broken_row():
        raise RuntimeError("CUDA out of memory")

    out = tmp_path / "gpu.json"
    recorder = Recorder(out, {"dry_run": True}, note="test")
    recorder.run("rows", [lambda: {"model": "a"}, broken_row, lambda: {"model": "b"}])
    saved = json.loads(out.read_text())
    assert [r["model"] for r in saved["rows"]] == ["a", "b"]
    assert saved["errors"] == ["rows: RuntimeError: CUDA out of memory"]
