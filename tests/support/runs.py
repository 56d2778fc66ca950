"""Run the real entry scripts in subprocesses on tiny configs (docs/design.md §6: never DDP in-process)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


def write_corpus(path: Path, n_docs: int = 96, seed: int = 0, min_words: int = 3, max_words: int = 40) -> Path:
    """Short text documents of varied length (some longer than a 32-token segment, most not)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            n = rng.randint(min_words, max_words)
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n))}) + "\n")
    return path


def deep_update(base: dict, upd: dict) -> dict:
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def make_config(tmp: Path, overrides: dict | None = None, base: str = "configs/test/tiny.yaml",
                name: str = "cfg.yaml", corpus: Path | None = None) -> Path:
    """The base config with temporary data/run paths and `overrides` merged in."""
    cfg = yaml.safe_load((ROOT / base).read_text())
    corpus = corpus or write_corpus(tmp / "corpus.jsonl")
    deep_update(cfg, {"data": {"origin": {"source_data_files": str(corpus)}, "data_path": str(tmp / "data")},
                      "trainer": {"default_root_dir": str(tmp / "run")}})
    deep_update(cfg, overrides or {})
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict:
    e = dict(os.environ)
    e.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
             PYTHONWARNINGS="ignore")
    # DeepSpeed JIT builds (cpu_adam) are cached next to the venv, shared by all tests of a CI run
    e.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
    return e


def run(args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def preload(cfg: Path) -> subprocess.CompletedProcess:
    return run(["preload_datapath.py", str(cfg)])


def fit(cfg: Path, *extra: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return run(["lightning_trainer.py", "fit", "-c", str(cfg), *extra], check=check, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    import csv

    rows = []
    for path in sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows
