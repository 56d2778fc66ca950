"""rwkv/atomic.py: the one atomic-write helper (temp file beside the target, fsync, rename, fsync dir)."""

import os
import re
import stat
from pathlib import Path

import pytest

from rwkv.atomic import atomic_file, commit_file, swap_in_dir

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_file_publishes_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_file(target) as tmp:
        Path(tmp).write_bytes(b"new")
        assert not target.exists() and Path(tmp).parent == target.parent  # same file system: a rename
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new"  # the good file survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # no temporary left behind


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "f") as tmp:
            Path(tmp).write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640  # not mkstemp's 0600


def test_commit_file_for_streaming_writers(tmp_path):
    tmp = tmp_path / ".stream.tmp"
    tmp.write_bytes(b"abc")
    commit_file(tmp, tmp_path / "stream")
    assert (tmp_path / "stream").read_bytes() == b"abc" and not tmp.exists()


def test_swap_in_dir_replaces_a_directory_whole(tmp_path):
    target, build = tmp_path / "data", tmp_path / "build"
    target.mkdir()
    (target / "a").write_text("old")
    build.mkdir()
    (build / "b").write_text("new")
    swap_in_dir(build, target)
    assert [p.name for p in target.iterdir()] == ["b"] and not build.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the old version is gone
    build.mkdir()
    swap_in_dir(build, tmp_path / "fresh", old=tmp_path / "fresh.old")  # no previous version
    assert (tmp_path / "fresh").is_dir() and not (tmp_path / "fresh.old").exists()
def test_no_other_module_renames_outputs_itself():
    """One home: every rename that publishes an output goes through rwkv/atomic.py. The only other
    rename is find_resume_checkpoint's recovery of a swap interrupted between its two renames."""
    allowed = {"rwkv/atomic.py": None, "rwkv/checkpoint/resume.py": 1}
    found = {}
    for path in sorted((ROOT / "rwkv").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n = len(re.findall(r"\bos\.(?:replace|rename)\(|\.rename\(|mkstemp\(", path.read_text()))
        if n and rel != "rwkv/atomic.py":
            found[rel] = n
    assert found == {k: v for k, v in allowed.items() if v}, found
