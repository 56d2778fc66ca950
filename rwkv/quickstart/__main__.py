"""`python -m rwkv.quickstart` (= `make quickstart`): the whole user path on embedded data, on CPU.

1. generate seeded arithmetic dialogues (rwkv/quickstart/arithmetic.py) into data/quickstart/;
2. `preload_datapath.py configs/quickstart.yaml` (tokenize, pack, cache);
3. `lightning_trainer.py fit -c configs/quickstart.yaml` (a small x070, at most --minutes of training);
4. `export_checkpoint.py` -> out/quickstart/model.pth;
5. exact-match on held-out problems; the last line printed is `arithmetic exact-match: X.XX (n=N)`.

The whole command is meant to take at most 8 minutes on a 2-core CPU: 6.5 minutes of training (the lr
schedule is bound to that time, configs/quickstart.yaml) and the rest for the other steps.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .arithmetic import make_dataset

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict:
    """The environment of the steps. OpenMP threads that finish an op busy-wait for the next one; libgomp's
    default spin is long, and on a 2-core machine that also runs anything else the spinning thread burns
    the time slice the other one needs (a step took 6-9x longer). Sleeping at once (OMP_WAIT_POLICY=PASSIVE)
    fixes that but costs ~15 % on a quiet machine, where this model's small ops wake the workers thousands
    of times a step. A short spin (GOMP_SPINCOUNT=20000, tens of microseconds) was as fast as the default
    when quiet and nearly as fast as PASSIVE under load (docs/benchmarks.md "Quickstart"). A user's own
    OMP_WAIT_POLICY / GOMP_SPINCOUNT wins."""
    env = dict(os.environ)
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = "20000"
    return env


def step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, env=child_env())
    print(f"== {title} done in {time.perf_counter() - t:.0f} s", flush=True)


def fresh_checkpoints(out: Path) -> None:
    """Remove the previous quickstart's checkpoints: each run starts fresh, and with an earlier last.ckpt
    in place Lightning would write this run's as last-v1.ckpt, so that exporting last.ckpt scored the old
    model (it did, for every re-run, until this was found)."""
    ckpts = out / "checkpoints"
    if ckpts.exists():
        print(f"removing the previous run's checkpoints in {ckpts}", flush=True)
        shutil.rmtree(ckpts)


def training_summary(out: Path) -> str:
    """Steps, tokens and throughput of the newest run under `out` (its CSV log): how far this machine got
    in the time budget is what the score depends on."""
    logs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda f: f.stat().st_mtime)
    if not logs:
        return "no training log found"
    rows = list(csv.DictReader(open(logs[-1])))
    steps = [r for r in rows if r.get("train/tok_s")]
    tokens = [float(r["train/tokens"]) for r in steps]
    # time inside the steps: each step's tokens over its own tok/s (train/tokens is cumulative)
    seconds = sum((t - t0) / float(r["train/tok_s"]) for r, t, t0 in zip(steps, tokens, [0.0, *tokens[:-1]]))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    return (f"trained {len(steps)} steps, {tokens[-1] / 1e6:.2f}M tokens, {tokens[-1] / max(seconds, 1e-9):,.0f} tok/s"
            f" (train/tok_s), last val loss {val[-1] if val else float('nan'):.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rwkv.quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--max_operand", type=int, default=99, help="99: two-digit problems; 999: three-digit")
    p.add_argument("--minutes", type=float, default=6.5, help="training time budget (trainer.max_time)")
    p.add_argument("--max_steps", type=int, default=None, help="override trainer.max_steps (schedule length)")
    p.add_argument("--out", default="out/quickstart")
    p.add_argument("--n_eval", type=int, default=500)
    args, extra = p.parse_known_args(argv)
    t0 = time.perf_counter()
    data_dir = ROOT / "data" / f"quickstart-{args.max_operand}"
    out = ROOT / args.out
    counts = make_dataset(data_dir, max_operand=args.max_operand, n_eval=args.n_eval)
    print(f"generated {counts['train']} training dialogues and {counts['eval']} held-out problems in {data_dir}")
    overrides = [f"--data.origin.source_data_files={data_dir / 'train.jsonl'}",
                 f"--data.data_path={data_dir / 'tokens'}", f"--trainer.default_root_dir={out}", *extra]
    step("preload", ["preload_datapath.py", args.config, *[o for o in overrides if o.startswith("--data.")]])
    minutes = int(args.minutes)
    seconds = round((args.minutes - minutes) * 60)
    fit = ["lightning_trainer.py", "fit", "-c", args.config, *overrides,
           f"--trainer.max_time=00:00:{minutes:02d}:{seconds:02d}"]
    if args.max_steps:
        fit.append(f"--trainer.max_steps={args.max_steps}")
    fresh_checkpoints(out)
    step("fit", fit)
    print(training_summary(out), flush=True)
    step("export", ["export_checkpoint.py", str(out / "checkpoints" / "last.ckpt"), str(out / "model.pth")])
    from .evaluate import exact_match

    acc, n, examples = exact_match(out / "model.pth", data_dir / "eval.jsonl")
    for prompt, want, got in examples[:5]:
        print(f"  {prompt.splitlines()[0]!r:34} expected {want:>5}  got {got!r}")
    print(f"quickstart took {time.perf_counter() - t0:.0f} s")
    print(f"arithmetic exact-match: {acc:.2f} (n={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
