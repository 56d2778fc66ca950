"""`python -m rwkv.quickstart.peft_demo`: full fine-tune, LoRA and state tuning each teach the quickstart's
arithmetic model a skill it never saw, on CPU, through the real trainer and exporter
(docs/benchmarks.md "PEFT learning demonstration").

Base: the quickstart's model (`make quickstart` writes out/quickstart/model.pth); it is copied to
OUT/base.pth first, so that a later quickstart run cannot change the base under a run.

The skill: answer a follow-up as if the previous answer had been 42. The quickstart's chats have
follow-ups on the previous answer ("Q: And +35?" after "A: 42" -> 77); here every chat *opens* with one,
and no 42 is in the text: "Q: And +35?\n\nA:" -> " 77". The base has no previous answer to use and scores
~0; a learned initial state can stand in for the missing turn (the WKV state the base itself reaches after
"Q: 40+2=\n\nA: 42\n\n" answers most of them), and full or LoRA weights can learn the constant.
Held out: a seeded quarter of the (operator, operand) pairs never opens a training chat, so the score
measures adding to / subtracting from 42, not recall.

Part 1: configs/peft-demo-{full,lora,state}.yaml train on the same chats (packed 256-token rows); each run
is exported with export_checkpoint.py (merged fp32 .pth; for state tuning also the state file, which the
evaluation loads onto the base) and scored on the held-out openers, plus the base skill (held-out "Q:
a+b=" problems of the quickstart) to show what was kept.

Part 2, long samples (configs/peft-demo-long-state.yaml, state tuning only): the same chats, one per row,
with model.segments.ctx_len 12. The first learned token of a chat sits at position >= 14, so the first segment
of every sample has no learned token: with `bptt: truncated` the learned initial state gets gradient from
the first segment only, i.e. none, and stays the base's zero state; with `bptt: full` the later
segments' losses reach it through the carried state (docs/tbptt.md "State tuning").

The last lines printed are the results table (docs/benchmarks.md has a measured one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .arithmetic import FOLLOW_UPS, QUESTION_WEIGHTS, QUESTIONS, eval_prompt, is_held_out, render

ROOT = Path(__file__).resolve().parents[2]
SEED, HELD_OUT_SHARE = 0, 0.05  # the quickstart's held-out split (arithmetic.make_dataset defaults)
PREVIOUS = 42  # the previous answer the openers refer to, never written in the data
OPENER_HELD_OUT = 0.25  # share of (operator, operand) pairs kept out of training openers
LONG_CTX = 12  # model.segments.ctx_len of configs/peft-demo-long-state.yaml: shorter than any opener's prompt
MAX_OPERAND = 99


def opener_held_out(op: str, b: int) -> bool:
    return random.Random(f"peft-demo:{op},{b}").random() < OPENER_HELD_OUT


def follow_up(rng: random.Random, value: int, op: str, b: int) -> tuple[str, str, int]:
    p = render(value, op, b)
    user, bot = rng.choice(FOLLOW_UPS)
    return user.format(**p), bot.format(**p), p["c"]


def chat(rng: random.Random, max_turns: int = 3) -> list[dict]:
    """An opener on the implicit previous answer, then ordinary quickstart turns (follow-ups on the value
    in the text, or fresh problems) so that a full fine-tune keeps seeing the base skill."""
    while True:
        op, b = rng.choice("+-"), rng.randint(0, MAX_OPERAND)
        if not opener_held_out(op, b):
            break
    user, bot, value = follow_up(rng, PREVIOUS, op, b)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
    for _ in range(rng.randint(1, max_turns) - 1):
        op, b = rng.choice("+-"), rng.randint(0, MAX_OPERAND)
        # no later turn computes with 42: a held-out opener's sum or difference must not appear as text
        if (abs(value) <= MAX_OPERAND and rng.random() < 0.5 and PREVIOUS not in (value, b)
                and not is_held_out(value, op, b, SEED, HELD_OUT_SHARE)):
            user, bot, value = follow_up(rng, value, op, b)
        else:
            while True:
                a, b, op = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND), rng.choice("+-")
                if PREVIOUS not in (a, b) and not is_held_out(a, op, b, SEED, HELD_OUT_SHARE):
                    break
            p = render(a, op, b)
            user, bot = rng.choices(QUESTIONS, QUESTION_WEIGHTS)[0]
            user, bot, value = user.format(**p), bot.format(**p), p["c"]
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
    return messages


def opener_prompts() -> list[dict]:
    """Every held-out opener in both follow-up phrasings."""
    rows = []
    for op in "+-":
        for b in range(MAX_OPERAND + 1):
            if opener_held_out(op, b):
                p = render(PREVIOUS, op, b)
                for user, bot in FOLLOW_UPS:
                    rows.append({"prompt": f"Q: {user.format(**p)}\n\nA:", "answer": bot.format(**p)})
    return rows


def base_skill_prompts(n: int, seed: int = 3) -> list[dict]:
    """Held-out problems of the quickstart, in its evaluation phrasing."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        a, b, op = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND), rng.choice("+-")
        if is_held_out(a, op, b, SEED, HELD_OUT_SHARE) and (a, op, b) not in seen:
            seen.add((a, op, b))
            out.append({"prompt": eval_prompt(render(a, op, b)["q"]), "answer": str(render(a, op, b)["c"])})
    return out


def make_data(out_dir: Path, n_train: int = 6000, n_base_eval: int = 200, seed: int = 1) -> dict:
    """Write train.jsonl (chat `messages`), eval.jsonl (held-out openers) and base_eval.jsonl ({prompt,
    answer}); returns counts."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "train.jsonl", "w") as f:
        for _ in range(n_train):
            f.write(json.dumps({"messages": chat(rng)}) + "\n")
    counts = {"train": n_train}
    for name, rows in (("eval", opener_prompts()), ("base_eval", base_skill_prompts(n_base_eval))):
        with open(out_dir / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        counts[name] = len(rows)
    return counts


def exact_match(model_path: Path, eval_file: Path, state_file: Path | None = None) -> tuple[float, int, list]:
    """Greedy answers to eval_file's prompts, from the model alone or from the state file's initial state:
    (exact-match, n, first three (expected, got))."""
    import torch

    from ..data.tokenizers import get_tokenizer
    from ..inference import greedy_complete
    from ..model import from_pth

    tok = get_tokenizer("bytes")
    model = from_pth(model_path).float().eval()
    if state_file is not None:
        from ..peft import attach_time_state, load_state_file

        attach_time_state(model, load_state_file(state_file), source=str(state_file))
    rows = [json.loads(line) for line in open(eval_file)]
    with torch.no_grad():
        outs = greedy_complete(model, [tok.encode(r["prompt"]) for r in rows], max_new=12,
                               stop_id=tok.encode("\n")[0])
    got = [tok.decode(o).strip() for o in outs]
    return (sum(g == r["answer"] for g, r in zip(got, rows)) / max(len(rows), 1), len(rows),
            [(r["answer"], g) for r, g in zip(rows[:3], got)])


# name -> (config, overrides)
RUNS = {
    "full": ("configs/peft-demo-full.yaml", []),
    "lora": ("configs/peft-demo-lora.yaml", []),
    "state": ("configs/peft-demo-state.yaml", []),
    "long-full": ("configs/peft-demo-long-state.yaml", ["--model.segments.bptt=full"]),
    "long-truncated": ("configs/peft-demo-long-state.yaml", ["--model.segments.bptt=truncated"]),
}


def run(title: str, cmd: list[str]) -> float:
    from .__main__ import child_env

    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, env=child_env())
    dt = time.perf_counter() - t
    print(f"== {title} done in {dt:.0f} s", flush=True)
    return dt


def steps_done(run_dir: Path) -> int:
    import csv

    logs = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda f: f.stat().st_mtime)
    return sum(1 for r in csv.DictReader(open(logs[-1])) if r.get("train/tok_s")) if logs else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rwkv.quickstart.peft_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="out/quickstart/model.pth", help="the quickstart's exported model")
    p.add_argument("--out", default="out/peft-demo")
    p.add_argument("--data", default="data/peft-demo")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args, extra = p.parse_known_args(argv)  # extra: trainer/model overrides for every run
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    base_src, out, data = ROOT / args.base, ROOT / args.out, ROOT / args.data
    if not base_src.is_file():
        print(f"{args.base} does not exist: run `make quickstart` first (about 7-8 minutes on 2 CPU cores; it "
              "trains the arithmetic model this demo starts from), or pass --base MODEL.pth", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base.pth"  # the configs' model.load_model
    shutil.copyfile(base_src, base)
    counts = make_data(data)
    print(f"generated {counts} in {data}; base {args.base} copied to {base}")
    skill_before = exact_match(base, data / "eval.jsonl")
    kept_before = exact_match(base, data / "base_eval.jsonl")
    print(f"base: skill {skill_before[0]:.2f} (n={skill_before[1]}) e.g. {skill_before[2]}, base skill "
          f"{kept_before[0]:.2f} (n={kept_before[1]})", flush=True)
    rows = []
    for name in args.runs:
        config, overrides = RUNS[name]
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
        fit_s = run(f"fit {name}", ["lightning_trainer.py", "fit", "-c", config,
                                    f"--trainer.default_root_dir={run_dir}", *overrides, *extra])
        state = run_dir / "state.pth" if "state" in config else None
        export = ["export_checkpoint.py", str(run_dir / "checkpoints" / "last.ckpt"), str(run_dir / "model.pth"),
                  "--dtype", "fp32"]  # fp32: a bf16 export would round small LoRA deltas away
        export_s = run(f"export {name}", export + (["--state", str(state)] if state else []))
        skill = exact_match(run_dir / "model.pth", data / "eval.jsonl", state)
        kept = exact_match(run_dir / "model.pth", data / "base_eval.jsonl", state)
        if state:  # an untrained state stays exactly zero (Adam moves nothing without a gradient)
            import torch

            biggest = max(float(t.abs().max()) for t in torch.load(state, weights_only=True).values())
            print(f"{name}: largest |learned state entry| {biggest:.4g}")
        print(f"{name}: skill {skill_before[0]:.2f} -> {skill[0]:.2f} e.g. {skill[2]}; base skill "
              f"{kept_before[0]:.2f} -> {kept[0]:.2f}", flush=True)
        rows.append((name, steps_done(run_dir), fit_s, export_s, skill, kept))
    total = time.perf_counter() - t0
    print(f"\n| run | steps | fit s | export s | skill before | skill after (n={skill_before[1]}) "
          f"| base skill before | after (n={kept_before[1]}) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, steps, fit_s, export_s, skill, kept in rows:
        print(f"| {name} | {steps} | {fit_s:.0f} | {export_s:.0f} | {skill_before[0]:.2f} | {skill[0]:.2f} "
              f"| {kept_before[0]:.2f} | {kept[0]:.2f} |")
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end, {os.cpu_count()} CPUs")
    print(f"peft demo took {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
