"""Checkpoint writes that never leave a torn file or directory behind (docs/design.md §3.7).

* Single-file checkpoints: `AtomicCheckpointIO` writes to a temporary file in the target directory, fsyncs
  and renames over the target (fsspec's transaction stages in the system temp dir and then *copies*
  across file systems, which a kill can interrupt).
* DeepSpeed checkpoint directories: `atomic_directory` builds `<path>.tmp`, then swaps it in with renames
  (old → `<path>.old`, new → `<path>`, delete old). `find_resume_checkpoint` understands a swap
  interrupted between the two renames.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic import atomic_file, swap_in_dir


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)


@contextmanager
def atomic_directory(path: Path, is_writer: bool, barrier):
    """Yield a staging directory; on success swap it in for `path`. All ranks write into the staging
    directory (DeepSpeed shards); `is_writer` (global rank 0) does the renames between barriers."""
    path = Path(path)
    staging = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    if is_writer and staging.exists():
        shutil.rmtree(staging)  # leftovers of a write that was killed
    barrier()
    yield staging
    barrier()
    if is_writer:
        swap_in_dir(staging, path, old=old)  # the `.old` name is what find_resume_checkpoint recovers
    barrier()


def is_complete(path: Path) -> bool:
    """A checkpoint we can resume from: a readable single file, or a DeepSpeed dir with its `latest` tag."""
    path = Path(path)
    if path.is_dir():
        tag = path / "latest"
        return tag.is_file() and (path / tag.read_text().strip()).is_dir()
    if not path.is_file():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception:  # noqa: BLE001 - any read failure means "not resumable"
        return False


def find_resume_checkpoint(dirpath: Path) -> Path | None:
    """The newest complete checkpoint in `dirpath` (last.ckpt first; falls back to older ones, and to a
    `.old` directory left by a swap that was interrupted between its two renames)."""
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        return None
    last = dirpath / "last.ckpt"
    if not last.exists() and (dirpath / "last.ckpt.old").exists():
        os.replace(dirpath / "last.ckpt.old", last)
    candidates = sorted((p for p in dirpath.glob("*.ckpt") if not p.name.startswith(".")),
                        key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime), reverse=True)
    for cand in candidates:
        if is_complete(cand):
            return cand
    return None
