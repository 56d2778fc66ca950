"""Seeded arithmetic dialogues for the quickstart, in the spirit of RWKV-7-Arithmetic-0.1B (pretrained on
mixed-format add/sub dialogues): several phrasings, multi-turn chats, negative results.

Problems are (a, op, b) with operands in [0, max_operand] and op in {+, -}. A fixed, seeded share of the
problems is held out: no training document contains a held-out problem in any phrasing, so the
evaluation measures arithmetic, not recall. Evaluation asks in one canonical phrasing:
    "User: What is {a}{op}{b}?\\n\\nAssistant:"  ->  " {answer}"
"""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTIONS = [  # (user text, assistant text); {q} = "a+b" / "a-b", {w} = "a plus b" / "a minus b"
    ("What is {q}?", "{c}"),
    ("{q}=", "{c}"),
    ("Compute {q}.", "{q}={c}"),
    ("What is {w}?", "{c}"),
    ("Calculate {w}.", "The answer is {c}."),
    ("{a} {o} {b} = ?", "{a} {o} {b} = {c}"),
]
FOLLOW_UPS = [  # continue from the previous answer: "and then {o} {b}?"
    ("And {o} {b}?", "{c}"),
    ("Now {w2} {b}.", "{c}"),
]


def render(a: int, op: str, b: int) -> dict:
    c = a + b if op == "+" else a - b
    return {"a": a, "b": b, "o": op, "c": c, "q": f"{a}{op}{b}", "w": f"{a} {'plus' if op == '+' else 'minus'} {b}",
            "w2": "add" if op == "+" else "subtract"}


def is_held_out(a: int, op: str, b: int, seed: int, share: float) -> bool:
    """A deterministic, seeded coin per problem (independent of generation order)."""
    return random.Random(f"{seed}:{a}{op}{b}").random() < share


def make_dataset(out_dir: Path, max_operand: int = 99, n_train: int = 60000, n_eval: int = 500, seed: int = 0,
                 held_out_share: float = 0.05) -> dict:
    """Write train.jsonl (chat `messages`) and eval.jsonl ({prompt, answer}); returns counts."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    def problem():
        while True:
            a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice("+-")
            if not is_held_out(a, op, b, seed, held_out_share):
                return a, op, b

    with open(out_dir / "train.jsonl", "w") as f:
        for _ in range(n_train):
            a, op, b = problem()
            user, bot = rng.choice(QUESTIONS)
            p = render(a, op, b)
            messages = [{"role": "user", "content": user.format(**p)},
                        {"role": "assistant", "content": bot.format(**p)}]
            value = p["c"]
            for _ in range(rng.choice([0, 0, 1, 2])):  # multi-turn: chain on the previous result
                op2, b2 = rng.choice("+-"), rng.randint(0, max_operand)
                if abs(value) > max_operand or is_held_out(value, op2, b2, seed, held_out_share):
                    break
                p2 = render(value, op2, b2)
                u2, r2 = rng.choice(FOLLOW_UPS)
                messages += [{"role": "user", "content": u2.format(**p2)},
                             {"role": "assistant", "content": r2.format(**p2)}]
                value = p2["c"]
            f.write(json.dumps({"messages": messages}) + "\n")
    seen, held = set(), []
    eval_rng = random.Random(seed + 1)
    while len(held) < n_eval:
        a, b, op = eval_rng.randint(0, max_operand), eval_rng.randint(0, max_operand), eval_rng.choice("+-")
        if is_held_out(a, op, b, seed, held_out_share) and (a, op, b) not in seen:
            seen.add((a, op, b))
            held.append(render(a, op, b))
    with open(out_dir / "eval.jsonl", "w") as f:
        for p in held:
            f.write(json.dumps({"prompt": f"User: What is {p['q']}?\n\nAssistant:", "answer": str(p["c"])}) + "\n")
    return {"train": n_train, "eval": len(held)}


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rwkv.quickstart.arithmetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="writes train.jsonl (chat messages) and eval.jsonl here")
    p.add_argument("--max_operand", type=int, default=99)
    p.add_argument("--n_train", type=int, default=60000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = make_dataset(args.out_dir, args.max_operand, args.n_train, seed=args.seed)
    print(f"wrote {counts['train']} dialogues and {counts['eval']} held-out problems to {args.out_dir}")


if __name__ == "__main__":
    main()
