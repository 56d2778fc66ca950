"""Seeded arithmetic dialogues for the quickstart, in the spirit of RWKV-7-Arithmetic-0.1B (pretrained on
mixed-format add/sub dialogues): several phrasings, multi-turn chats (independent questions and follow-ups
on the previous answer), negative results and operands.

Problems are (a, op, b) with operands in [0, max_operand] and op in {+, -}. A fixed, seeded share of the
problems is held out as unordered pairs: no training document contains a held-out problem, or the same
operator on the same two operands in the other order, in any phrasing (follow-ups included), so the
evaluation measures arithmetic, not recall. Evaluation asks in one phrasing:
    "Q: {a}{op}{b}=\n\nA:"  ->  " {answer}"

The chat labels are `Q`/`A` (data.format.conversation_role_map in configs/quickstart.yaml), not the long
"User:"/"Assistant:" of World models: the masked "\n\nAssistant: " puts 13 tokens between the question
and the first answer digit, across which a tiny model must carry its result, and it doubles the tokens per
problem. Measured with the same model, batch and 4.5 minutes of training: 0.53 exact-match with Q/A, 0.01
with User/Assistant (docs/benchmarks.md "Quickstart").
"""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTIONS = [  # (user text, assistant text); {q} = "a+b" / "a-b", {w} = "a plus b" / "a minus b"
    ("{q}=", "{c}"),
    ("What is {q}?", "{c}"),
    ("{a} {o} {b} =", "{c}"),
    ("What is {w}?", "{c}"),
    ("Compute {q}.", "{q}={c}"),
]
# How often each phrasing is drawn. The evaluation's own phrasing ("a+b=") is the shortest and most
# frequent: more problems per trained token; the others keep the variety (docs/benchmarks.md "Quickstart").
QUESTION_WEIGHTS = (4, 1.5, 1.5, 1.5, 1.5)
FOLLOW_UPS = [  # continue from the previous answer ({a} = that answer)
    ("And {o}{b}?", "{c}"),
    ("Then {w2} {b}.", "{c}"),
]
TURNS = (1, 4)  # questions per dialogue
FOLLOW_UP_SHARE = 0.25  # of the turns after the first, when the previous answer is a valid operand


def render(a: int, op: str, b: int) -> dict:
    c = a + b if op == "+" else a - b
    return {"a": a, "b": b, "o": op, "c": c, "q": f"{a}{op}{b}", "w": f"{a} {'plus' if op == '+' else 'minus'} {b}",
            "w2": "add" if op == "+" else "subtract"}


def is_held_out(a: int, op: str, b: int, seed: int, share: float) -> bool:
    """A deterministic, seeded coin per unordered operand pair and operator (independent of generation
    order): a+b and b+a (a-b and b-a) are held out together, so a model cannot pass the evaluation by
    recalling the swapped problem from training (commutativity, or the negated difference)."""
    lo, hi = sorted((a, b))
    return random.Random(f"{seed}:{lo},{op},{hi}").random() < share


def eval_prompt(q: str) -> str:
    return f"Q: {q}=\n\nA:"


def make_dataset(out_dir: Path, max_operand: int = 99, n_train: int = 100000, n_eval: int = 500, seed: int = 0,
                 held_out_share: float = 0.05, question_weights=QUESTION_WEIGHTS) -> dict:
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
            messages, value = [], None
            for _ in range(rng.randint(*TURNS)):
                op2, b2 = rng.choice("+-"), rng.randint(0, max_operand)
                if (value is not None and abs(value) <= max_operand and rng.random() < FOLLOW_UP_SHARE
                        and not is_held_out(value, op2, b2, seed, held_out_share)):
                    p = render(value, op2, b2)  # negative operands come from here
                    user, bot = rng.choice(FOLLOW_UPS)
                else:
                    p = render(*problem())
                    user, bot = rng.choices(QUESTIONS, question_weights)[0]
                messages += [{"role": "user", "content": user.format(**p)},
                             {"role": "assistant", "content": bot.format(**p)}]
                value = p["c"]
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
            f.write(json.dumps({"prompt": eval_prompt(p["q"]), "answer": str(p["c"])}) + "\n")
    return {"train": n_train, "eval": len(held)}


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rwkv.quickstart.arithmetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="writes train.jsonl (chat messages) and eval.jsonl here")
    p.add_argument("--max_operand", type=int, default=99)
    p.add_argument("--n_train", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = make_dataset(args.out_dir, args.max_operand, args.n_train, seed=args.seed)
    print(f"wrote {counts['train']} dialogues and {counts['eval']} held-out problems to {args.out_dir}")


if __name__ == "__main__":
    main()
