"""Refusals that keep other users' files from running as your code.

`--resume` hands the experiment directory to `Tuner.restore`, which unpickles `tuner.pkl`,
the searcher state, the trial objects embedded in `experiment_state-*.json` and each
trial's `error.pkl`. Whoever can write any of them can run code as the user who resumes,
so raygan resumes only an experiment that nobody else can change.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path

from raygan.errors import ConfigError

OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
# root can rewrite anything anyway, so root-owned files add no risk (as in ssh's StrictModes)
TRUSTED_UIDS = (0,)
TUNER_STATE = "tuner.pkl"  # what Ray Tune's Tuner.restore reads back


def _tree(root: Path) -> Iterator[Path]:
    """`root` and everything below it; symlinked directories are checked, not entered."""
    yield root
    for parent, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            yield Path(parent) / name


def check_private_dir(path: str | Path) -> None:
    """Raise ConfigError unless `path` and everything in it belong to you (or root) and
    nobody else may write to them."""
    root = Path(path)
    me = os.geteuid()
    for entry in _tree(root):
        try:
            st = entry.stat()  # follows links: the target is what gets read
        except FileNotFoundError:
            continue  # a dangling link, or a file Ray removed while we looked
        if st.st_uid != me and st.st_uid not in TRUSTED_UIDS:
            raise ConfigError(
                f"{entry} belongs to uid {st.st_uid}, not you (uid {me}): only its owner "
                "may resume this experiment"
            )
        if st.st_mode & OTHERS_WRITE:
            raise ConfigError(
                f"{entry} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                f"if you trust its contents, run `chmod -R go-w {shlex.quote(str(root))}`"
            )


def check_resumable(experiment: str) -> None:
    """Refuse to resume an experiment directory that is missing or that others can write.

    Object storage (`s3://...`) is not checked: who may write there is the bucket's policy."""
    if "://" in experiment:
        return
    path = Path(experiment)
    if not path.is_dir():
        raise ConfigError(f"--resume: experiment directory not found: {experiment}")
    if not (path / TUNER_STATE).is_file():
        raise ConfigError(
            f"--resume: {experiment} holds no search state ({TUNER_STATE}): the search stopped "
            "before Ray Tune saved it, so there is nothing to resume; delete the folder and start "
            "again"
        )
    try:
        check_private_dir(path)
    except ConfigError as e:
        raise ConfigError(f"--resume unpickles Tune state from {path}, but {e}") from None
