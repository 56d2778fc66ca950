"""Call PyPI's `rwkv` package on a .pth in an isolated subprocess (docs/design.md §6: it has our package's
import name, so `make setup` keeps it in ORACLE, a folder that only the subprocess puts on its path)."""

import subprocess
import sys
from pathlib import Path

import torch

RUNNER = Path(__file__).with_name("pip_rwkv_runner.py")
REPO = Path(__file__).resolve().parents[2]
ORACLE = Path(sys.prefix) / "oracle"  # the venv's oracle folder (Makefile: ORACLE)


def run_pip_rwkv(pth: Path, version: str, tokens, workdir: Path, strategy="cpu fp32", state_in=None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    req, out = workdir / "pip_request.pt", workdir / "pip_result.pt"
    model_arg = str(pth)[:-4] if str(pth).endswith(".pth") else str(pth)  # x070 appends .pth itself
    torch.save({"model": model_arg, "version": version, "strategy": strategy, "tokens": list(tokens),
                "state_in": state_in}, req)
    # -I: isolated mode, no script dir / cwd / PYTHONPATH on sys.path; cwd is outside the repo
    proc = subprocess.run([sys.executable, "-I", str(RUNNER), str(req), str(out), str(ORACLE)], cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pip rwkv failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = torch.load(out, weights_only=False)
    assert not result["rwkv_file"].startswith(str(REPO / "rwkv")), result["rwkv_file"]  # pip, not ours
    return result
