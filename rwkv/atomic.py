"""Atomic writes: the one home for "never leave a torn output behind" (docs/design.md §5.13).

Every file the project writes for users (checkpoints, exports, state files, binidx, preloaded datasets, HF
directories) is written next to its target under a temporary name and renamed over it only when complete:

* `atomic_file(path)` yields a temporary path in the target's directory; when the block ends without an
  exception the file is fsynced, given the permissions a plain `open()` would (mkstemp creates 0600),
  renamed over `path`, and the directory entry is fsynced. On an exception the temporary file is removed
  and `path` is untouched.
* `commit_file(tmp, path)` is the same last step for writers that stream into a temporary file themselves.
* `swap_in_dir(build, target)` replaces a directory by a finished one with two renames on the same file
  system (the old one is moved aside, then deleted), and fsyncs the parent.

A kill between the two renames of `swap_in_dir` leaves the previous version under the `old` name, which
`rwkv.checkpoint.resume.find_resume_checkpoint` recovers for checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def commit_file(tmp, path) -> None:
    """fsync the finished temporary file, give it the usual permissions, rename it over `path`."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextmanager
def atomic_file(path):
    """Yield a temporary path next to `path`; publish it as `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        commit_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_in_dir(build, target, old=None) -> None:
    """Replace directory `target` by the finished directory `build` (same file system): `target` → `old`
    (default: a hidden name beside it), `build` → `target`, fsync the parent, delete `old`."""
    build, target = Path(build), Path(target)
    old = Path(old) if old is not None else target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(build, target)
    fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
