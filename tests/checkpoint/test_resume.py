"""rwkv/checkpoint/resume.py: which checkpoint a restart resumes from, and DeepSpeed directories swapped in
whole (docs/design.md §3.7). tests/e2e/test_resume.py kills real runs; these check the pieces directly."""

import pytest
import torch

from rwkv.checkpoint.resume import atomic_directory, find_resume_checkpoint, is_complete


def _ckpt(path, step):
    torch.save({"global_step": step, "state_dict": {"w": torch.full((4,), float(step))}}, path)


def _deepspeed_dir(path, tag="global_step3"):
    (path / tag).mkdir(parents=True)
    (path / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (path / "latest").write_text(tag)


def test_torn_last_falls_back_to_an_older_complete_file(tmp_path):
    _ckpt(tmp_path / "epoch=0-step=2.ckpt", 2)
    _ckpt(tmp_path / "last.ckpt", 4)
    assert find_resume_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])
    assert not is_complete(tmp_path / "last.ckpt")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "epoch=0-step=2.ckpt"
    assert find_resume_checkpoint(tmp_path / "missing") is None


def test_deepspeed_dir_needs_its_latest_tag(tmp_path):
    ds = tmp_path / "last.ckpt"
    _deepspeed_dir(ds)
    assert is_complete(ds)
    (ds / "latest").write_text("global_step9")  # names a tag that was never written
    assert not is_complete(ds)
    (ds / "latest").unlink()
    assert not is_complete(ds) and find_resume_checkpoint(tmp_path) is None


def test_swap_interrupted_between_its_renames_is_recovered(tmp_path):
    _deepspeed_dir(tmp_path / "last.ckpt.old")  # old moved aside, new not yet renamed in
    assert find_resume_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert not (tmp_path / "last.ckpt.old").exists() and is_complete(tmp_path / "last.ckpt")


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "last.ckpt"
    _deepspeed_dir(target, "global_step1")
    (tmp_path / "last.ckpt.tmp").mkdir()  # leftovers of a killed write are cleared first
    (tmp_path / "last.ckpt.tmp" / "stale").write_text("x")
    calls = []
    with atomic_directory(target, True, lambda: calls.append(1)) as staging:
        assert staging == tmp_path / "last.ckpt.tmp" and not (staging / "stale").exists()
        _deepspeed_dir(staging, "global_step2")
        assert (target / "latest").read_text() == "global_step1"  # untouched while writing
    assert (target / "latest").read_text() == "global_step2" and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with pytest.raises(RuntimeError), atomic_directory(target, True, lambda: None) as staging:
        _deepspeed_dir(staging, "global_step3")
        raise RuntimeError("killed mid-write")
    assert (target / "latest").read_text() == "global_step2"
