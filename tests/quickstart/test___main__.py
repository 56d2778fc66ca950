"""The quickstart command's own pieces (rwkv/quickstart/__main__.py): the training summary read back from
the CSV log, and the OpenMP environment of its steps."""

import os

from rwkv.quickstart.__main__ import child_env, training_summary


def test_training_summary_reads_the_newest_log(tmp_path):
    old = tmp_path / "logs" / "version_0"
    old.mkdir(parents=True)
    (old / "metrics.csv").write_text("step,train/tok_s,train/tokens,val/loss\n0,1.0,10,\n")
    os.utime(old / "metrics.csv", (1e9, 1e9))  # an older run
    new = tmp_path / "logs" / "version_1"
    new.mkdir()
    # three steps of 1000, 1000 and 2000 tokens taking 0.5 s, 0.25 s and 0.25 s: 4000 tokens in 1 s;
    # a validation row in between (no tok/s) is not a step
    (new / "metrics.csv").write_text("step,train/tok_s,train/tokens,val/loss\n"
                                     "0,2000,1000,\n1,4000,2000,\n1,,,0.75\n2,8000,4000,\n2,,,0.5\n")
    assert training_summary(tmp_path) == ("trained 3 steps, 0.00M tokens, 4,000 tok/s (train/tok_s), "
                                          "last val loss 0.500")


def test_child_env_shortens_the_openmp_spin_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert child_env()["GOMP_SPINCOUNT"] == "20000"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert child_env()["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "GOMP_SPINCOUNT" not in child_env()
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert child_env()["GOMP_SPINCOUNT"] == "1000"
    assert "OMP_WAIT_POLICY" not in child_env()


def test_a_rerun_trains_and_exports_fresh_checkpoints(tmp_path, monkeypatch):
    """An earlier run's last.ckpt is removed before fit: with it in place Lightning names the new run's
    last-v1.ckpt and the quickstart exported (and scored) the earlier model."""
    import rwkv.quickstart.__main__ as qs
    import rwkv.quickstart.evaluate as ev

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_text("earlier run")
    seen = {}

    def fake_step(title, cmd):
        if title == "fit":
            seen["before_fit"] = sorted(p.name for p in (out / "checkpoints").glob("*"))
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / "last.ckpt").write_text("this run")
        if title == "export":
            seen["exported"] = open(cmd[1]).read()

    monkeypatch.setattr(qs, "ROOT", tmp_path)
    monkeypatch.setattr(qs, "step", fake_step)
    monkeypatch.setattr(qs, "make_dataset", lambda *a, **k: {"train": 1, "eval": 1})
    monkeypatch.setattr(ev, "exact_match", lambda *a, **k: (1.0, 1, []))
    assert qs.main(["--out", str(out)]) == 0
    assert seen == {"before_fit": [], "exported": "this run"}
