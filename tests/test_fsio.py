"""Durable writes: atomic JSON, and fsync of files before and directories after a rename."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from raygan import fsio
from raygan.checkpoint import _replace_dir


class Unserialisable:
    pass


@pytest.fixture
def fsync_log(monkeypatch) -> list[str]:
    """Paths that os.fsync was called on, in order (the real fsync still runs)."""
    calls: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_atomic_json_write_replaces_the_file_with_mode_644(tmp_path):
    file = tmp_path / "summary.json"
    file.write_text("{}")
    fsio.write_json_atomic(file, {"fid": 1.5, "nan": float("nan")})
    assert json.loads(file.read_text())["fid"] == 1.5
    assert stat.S_IMODE(file.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unserialisable_object_leaves_the_old_file_and_no_temp_file(tmp_path):
    file = tmp_path / "pretrained.json"
    file.write_text('{"fid": 1}')
    # json writes the first key before it meets the bad value
    with pytest.raises(TypeError):
        fsio.write_json_atomic(file, {"fid": 2, "bad": Unserialisable()})
    assert json.loads(file.read_text()) == {"fid": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["pretrained.json"]


def test_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    file = tmp_path / "summary.json"
    file.write_text('{"step": 1}')

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        fsio.write_json_atomic(file, {"step": 2})
    assert json.loads(file.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_json_write_syncs_the_data_before_and_the_directory_after_the_rename(
    tmp_path, fsync_log, monkeypatch
):
    renamed: list[int] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renamed.append(len(fsync_log))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    file = fsio.write_json_atomic(tmp_path / "best.json", {"a": 1})
    (synced_before,) = renamed
    assert synced_before == 1 and fsync_log[0].startswith(str(tmp_path / ".best.json."))
    assert fsync_log[1:] == [str(tmp_path)]
    assert file.exists()


def test_fsync_tree_syncs_every_file_before_its_directories(tmp_path, fsync_log):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.txt").write_text("b")
    fsio.fsync_tree(tmp_path)
    assert set(fsync_log) == {
        str(tmp_path / "a.txt"),
        str(tmp_path / "sub" / "b.txt"),
        str(tmp_path / "sub"),
        str(tmp_path),
    }
    assert fsync_log.index(str(tmp_path / "sub" / "b.txt")) < fsync_log.index(str(tmp_path / "sub"))
    assert fsync_log[-1] == str(tmp_path)


def test_fsync_dir_tolerates_filesystems_that_cannot_sync_directories(tmp_path, monkeypatch):
    def unsupported(fd):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    fsio.fsync_dir(tmp_path)


def test_fsync_dir_reports_real_io_errors(tmp_path, monkeypatch):
    def io_error(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)
    with pytest.raises(OSError, match="Input/output"):
        fsio.fsync_dir(tmp_path)


def staged_dir(parent: Path, text: str) -> Path:
    """A finished temporary directory, as save_checkpoint and export_best build them."""
    tmp = parent / f".ckpt.{text}"
    tmp.mkdir()
    (tmp / "generator.safetensors").write_text(text)
    (tmp / "raygan.json").write_text(text)
    return tmp


def test_checkpoint_files_are_synced_before_the_rename_and_the_parent_after(tmp_path, fsync_log):
    tmp = staged_dir(tmp_path, "new")
    _replace_dir(tmp, tmp_path / "ckpt")
    # Synced under the temporary name: before the rename
    assert set(fsync_log[:2]) == {str(tmp / "generator.safetensors"), str(tmp / "raygan.json")}
    assert fsync_log[2:] == [str(tmp), str(tmp_path)]
    assert (tmp_path / "ckpt" / "raygan.json").read_text() == "new"


def test_replacing_a_checkpoint_syncs_the_parent_before_the_old_copy_goes(
    tmp_path, fsync_log, monkeypatch
):
    _replace_dir(staged_dir(tmp_path, "old"), tmp_path / "ckpt")
    fsync_log.clear()
    removed_after: list[list[str]] = []
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: removed_after.append(list(fsync_log)))
    _replace_dir(staged_dir(tmp_path, "new"), tmp_path / "ckpt")
    assert removed_after == [fsync_log] and fsync_log[-1] == str(tmp_path)
    assert (tmp_path / "ckpt" / "raygan.json").read_text() == "new"
