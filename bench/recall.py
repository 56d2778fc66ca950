#!/usr/bin/env python3
"""Long-context recall: `truncated` vs `full` BPTT through the real trainer (docs/tbptt.md, docs/design.md §3).

Each sample is one prompt/completion record: a key letter, then random filler bytes, then `?`; the
completion (the only learned token) is the key. The key sits in segment 0 and the question in segment
`--distance` (or later), so the loss that teaches the model to *store* the key reaches the key's segment
only through the state gradient across `--distance` boundaries: `full` carries it, `truncated` cuts it.
The filler is drawn independently of the key, so nothing between key and question says anything about it.

The whole product path runs as subprocesses: seeded jsonl -> `preload_datapath.py` -> `lightning_trainer.py
fit` once per mode (same config, seed, data and steps) -> `export_checkpoint.py` -> `rwkv.model.from_pth`
on fresh held-out samples, fed in ctx_len segments with the state carried. Accuracy = greedy answer == key.

    .venv/bin/python bench/recall.py            # 1000 steps of batch 16, key 6 segments back (docs/benchmarks.md)
    .venv/bin/python bench/recall.py --quick    # smoke test of the path (< 1 min, accuracies meaningless)

Exit code 1 when a run missed its step count, the modes did not start from the same loss, or `full`
stayed below --target (not checked with --quick); a failing subprocess stops the script with its log.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KEYS = string.ascii_uppercase[:16]  # key values; chance = 1/16
FILLER = string.ascii_lowercase + string.digits + " "  # disjoint from KEYS and from "?": never a key
QUESTION = "?"
ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def make_records(n: int, rng: random.Random, prompt_len: int) -> list[dict]:
    """Key at position 0, question as the prompt's last token (the input that predicts the answer)."""
    out = []
    for _ in range(n):
        key = rng.choice(KEYS)
        filler = "".join(rng.choice(FILLER) for _ in range(prompt_len - 2))  # independent of the key
        out.append({"prompt": key + filler + QUESTION, "completion": key})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def config(args, work: Path, n_test: int) -> dict:
    return {
        "seed_everything": args.seed,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true",
            "microbatch_size": args.batch, "max_steps": args.steps, "max_epochs": -1,
            "val_check_interval": max(1, args.steps // 5), "check_val_every_n_epoch": None,
            "enable_model_summary": False, "enable_progress_bar": False,
        },
        "model": {
            "n_layer": 2, "n_embd": 64, "head_size": 16,
            "segments": {"ctx_len": args.ctx_len},
            "optimizer": {"lr_init": args.lr, "lr_final": round(args.lr / 10, 10), "warmup_steps": 20},
        },
        "data": {
            "data_path": str(work / "tokens"),
            "origin": {"source": "json", "source_data_files": str(work / "train.jsonl")},
            # one sample per row, exactly as written: no rechunking, no packing, no end-of-document token
            # (so the answer is the only learned token, and the key stays in the same row as the question)
            "format": {"tokenizer": "bytes", "eod_token_id": None},
            "rows": {"text_rechunk_auto": False, "text_rechunk_force": False, "packing_enable": False,
                     "test_split": n_test, "seed": args.seed, "num_proc": 1},
        },
    }


def run(cmd: list[str], log: Path, threads: int) -> float:
    """Run an entry script from the repo root; its output goes to `log`. Returns the wall time."""
    import os

    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(threads)}  # torch's intra-op threads (see --threads)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)} (log: {log})")
    return time.perf_counter() - t


def check_rows(data_path: Path, n_train: int, ctx_len: int, distance: int) -> None:
    """What the trainer will see: one sample per row, only the answer learned, answer == key, and the
    question at least `distance` segments after the key."""
    import numpy as np
    from datasets import load_from_disk

    from rwkv.data.tokenizers import get_tokenizer

    manifest = json.loads((data_path / "rwkv_manifest.json").read_text())
    assert manifest["layout"] == "documents", manifest["layout"]
    train = load_from_disk(str(data_path))["train"]
    assert len(train) == n_train and "doc_offsets" not in train.column_names, (len(train), train.column_names)
    ids, mask = np.array(train["input_ids"]), np.array(train["loss_mask"])  # fixed length: a 2-D array
    tok = get_tokenizer("bytes")
    key_ids = np.array([tok.encode(k)[0] for k in KEYS])
    answer = mask.argmax(1)
    assert (mask.sum(1) == 1).all() and (answer == ids.shape[1] - 1).all(), "only the answer may be learned"
    assert (ids[np.arange(len(ids)), answer] == ids[:, 0]).all() and np.isin(ids[:, 0], key_ids).all()
    assert not np.isin(ids[:, 1:-1], key_ids).any(), "a key value appears between key and answer"
    question = answer - 1  # position whose output predicts the answer
    assert (question // ctx_len >= distance).all(), "question fewer than `distance` segments after the key"
    print(f"data ok: {len(ids)} rows of {ids.shape[1]} tokens, key at position 0 (segment 0), question at "
          f"{question[0]} (segment {question[0] // ctx_len}), ctx_len {ctx_len}")


def accuracy(pth: Path, records: list[dict], ctx_len: int) -> float:
    """Greedy answer of the exported model, the prompt fed in ctx_len segments with the state carried."""
    import torch

    from rwkv.data.tokenizers import get_tokenizer
    from rwkv.model import from_pth

    tok = get_tokenizer("bytes")
    model = from_pth(pth).float().eval()
    x = torch.tensor([tok.encode(r["prompt"]) for r in records])
    want = torch.tensor([tok.encode(r["completion"])[0] for r in records])
    state = None
    with torch.no_grad():
        for a in range(0, x.shape[1], ctx_len):
            logits, state = model(x[:, a:a + ctx_len], state)
    return float((logits[:, -1].argmax(-1) == want).float().mean())


def train_losses(run_dir: Path) -> list[float]:
    """train/loss of every step, from the run's CSV log (evidence docs/design.md §5.11 asks runs to leave)."""
    rows = []
    for path in run_dir.rglob("metrics.csv"):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def prepare(args, work: Path) -> tuple[Path, list[dict]]:
    """Seeded training data preloaded by the real script (and checked), plus fresh held-out records."""
    import yaml

    # Prompt of distance·ctx_len + 1 tokens: the question (its last token) is in segment `distance`.
    prompt_len = args.distance * args.ctx_len + 1
    n_test = 64  # validation loss during fit; accuracy is measured on the separate eval set below
    train = make_records(args.steps * args.batch + n_test, random.Random(f"train-{args.seed}"), prompt_len)
    held_out = make_records(args.n_eval, random.Random(f"eval-{args.seed}"), prompt_len)
    assert not {r["prompt"] for r in held_out} & {r["prompt"] for r in train}, "eval sample seen in training"
    write_jsonl(work / "train.jsonl", train)
    cfg = work / "recall.yaml"
    cfg.write_text(yaml.safe_dump(config(args, work, n_test), sort_keys=False))
    run(["preload_datapath.py", str(cfg)], work / "preload.log", args.threads)
    check_rows(work / "tokens", args.steps * args.batch, args.ctx_len, args.distance)
    return cfg, held_out


def train_and_eval(args, work: Path, cfg: Path, mode: str, held_out: list[dict]) -> dict:
    run_dir = work / mode
    seconds = run(["lightning_trainer.py", "fit", "-c", str(cfg), f"--model.segments.bptt={mode}",
                   f"--trainer.default_root_dir={run_dir}"], work / f"fit-{mode}.log", args.threads)
    run(["export_checkpoint.py", str(run_dir / "checkpoints" / "last.ckpt"), str(run_dir / "model.pth"),
         "--dtype", "fp32"], work / f"export-{mode}.log", args.threads)
    losses = train_losses(run_dir)
    acc = accuracy(run_dir / "model.pth", held_out, args.ctx_len)
    print(f"{mode}: {len(losses)} steps in {seconds:.0f} s, held-out accuracy {acc:.3f}", flush=True)
    return {"mode": mode, "steps": len(losses), "seconds": seconds, "first_loss": losses[0],
            "loss": sum(losses[-50:]) / len(losses[-50:]), "acc": acc}


def report(args, results: list[dict]) -> bool:
    chance = 1 / len(KEYS)
    band = 3 * math.sqrt(chance * (1 - chance) / args.n_eval)  # what "at chance" means for n_eval samples
    print(f"\nkey {args.distance} segments of {args.ctx_len} tokens before the question "
          f"(prompt {args.distance * args.ctx_len + 1} tokens), L2-D64 head 16, batch {args.batch}, lr {args.lr}, "
          f"seed {args.seed}, {args.n_eval} held-out samples; chance {chance:.4f} (±{band:.3f} at 3σ)")
    print("| mode | steps | fit wall time (s) | train loss (last 50 steps) | held-out accuracy | chance |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['steps']} | {r['seconds']:.0f} | {r['loss']:.3f} | {r['acc']:.3f} | {chance:.4f} |")
    ok = True
    if any(r["steps"] != args.steps for r in results):
        print(f"FAIL: a run did not train for {args.steps} steps")
        ok = False
    # Same seed, data order and init: the first step's forward (hence its loss) is the same in every mode.
    first = [r["first_loss"] for r in results]
    if max(first) - min(first) > 1e-5 * first[0]:
        print(f"FAIL: the modes did not start alike (step-0 losses {first})")
        ok = False
    for r in results:
        if r["mode"] == "full" and not args.quick and r["acc"] < args.target:
            print(f"FAIL: full reached {r['acc']:.3f} < target {args.target}")
            ok = False
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ctx_len", type=int, default=32)
    p.add_argument("--distance", type=int, default=6, help="segments between the key and the question (≥ 4)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_eval", type=int, default=512)
    p.add_argument("--modes", nargs="+", default=["truncated", "full"])
    p.add_argument("--target", type=float, default=0.95, help="required held-out accuracy of full")
    # One thread: the L2-D64 model's matrices are too small to gain from a second one, and on this shared
    # 2-vCPU machine two threads competing with other jobs made a training step 10x slower (0.2 s -> 2-5 s).
    p.add_argument("--threads", type=int, default=1, help="torch threads of every subprocess and the eval")
    p.add_argument("--quick", action="store_true", help="smoke test: 40 steps of batch 8, distance 4")
    args = p.parse_args()
    if args.quick:
        args.steps, args.batch, args.distance, args.n_eval = 40, 8, 4, 128
    if args.distance < 1:
        p.error("--distance must be ≥ 1 (the issue asks for ≥ 4)")
    work = ROOT / "bench" / "_work" / "recall" / ("quick" if args.quick else "full")
    shutil.rmtree(work, ignore_errors=True)  # never export a stale checkpoint of an earlier run
    work.mkdir(parents=True)
    cfg, held_out = prepare(args, work)
    import torch

    torch.set_num_threads(args.threads)
    results = [train_and_eval(args, work, cfg, mode, held_out) for mode in args.modes]
    return 0 if report(args, results) else 1


if __name__ == "__main__":
    sys.exit(main())
