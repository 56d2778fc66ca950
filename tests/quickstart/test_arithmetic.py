"""The quickstart's data generator (rwkv/quickstart/arithmetic.py): correct answers, the promised variety,
and no held-out problem in any training document, in any phrasing (follow-ups included), nor with its
operands swapped (b+a of a held-out a+b; b-a of a held-out a-b)."""

import json
import re

from rwkv.quickstart.arithmetic import eval_prompt, is_held_out, make_dataset

SEED, SHARE = 0, 0.05
NUM = r"(-?\d+)"
# user text -> (a, op, b), with `prev` the previous answer for follow-ups
PATTERNS = [
    (re.compile(rf"^{NUM}([+-])(\d+)=$"), lambda m, prev: (int(m[1]), m[2], int(m[3]))),
    (re.compile(rf"^What is {NUM}([+-])(\d+)\?$"), lambda m, prev: (int(m[1]), m[2], int(m[3]))),
    (re.compile(rf"^{NUM} ([+-]) (\d+) =$"), lambda m, prev: (int(m[1]), m[2], int(m[3]))),
    (re.compile(rf"^What is {NUM} (plus|minus) (\d+)\?$"),
     lambda m, prev: (int(m[1]), "+" if m[2] == "plus" else "-", int(m[3]))),
    (re.compile(rf"^Compute {NUM}([+-])(\d+)\.$"), lambda m, prev: (int(m[1]), m[2], int(m[3]))),
    (re.compile(r"^And ([+-])(\d+)\?$"), lambda m, prev: (prev, m[1], int(m[2]))),
    (re.compile(r"^Then (add|subtract) (\d+)\.$"), lambda m, prev: (prev, "+" if m[1] == "add" else "-", int(m[2]))),
]


def parse(user: str, prev):
    for pattern, get in PATTERNS:
        m = pattern.match(user)
        if m:
            return get(m, prev), pattern.pattern
    raise AssertionError(f"unknown phrasing {user!r}")


def test_training_dialogues_are_correct_varied_and_exclude_held_out(tmp_path):
    counts = make_dataset(tmp_path, max_operand=99, n_train=3000, n_eval=200, seed=SEED, held_out_share=SHARE)
    assert counts == {"train": 3000, "eval": 200}
    held = set()
    for line in open(tmp_path / "eval.jsonl"):
        r = json.loads(line)
        m = re.fullmatch(r"Q: (\d+)([+-])(\d+)=\n\nA:", r["prompt"])
        a, op, b = int(m[1]), m[2], int(m[3])
        assert 0 <= a <= 99 and 0 <= b <= 99 and is_held_out(a, op, b, SEED, SHARE)
        assert int(r["answer"]) == (a + b if op == "+" else a - b) and r["prompt"] == eval_prompt(f"{a}{op}{b}")
        held.add((a, op, b))
    assert len(held) == 200  # distinct problems
    # the oracle: unordered operand pairs per operator, read from eval.jsonl alone (not from is_held_out)
    held_pairs = {(op, frozenset((a, b))) for a, op, b in held}

    phrasings, turns, negative_operand, negative_answer, problems = set(), [], 0, 0, 0
    for line in open(tmp_path / "train.jsonl"):
        msgs = json.loads(line)["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        turns.append(len(msgs) // 2)
        prev = None
        for user, bot in zip(msgs[::2], msgs[1::2]):
            (a, op, b), which = parse(user["content"], prev)
            c = a + b if op == "+" else a - b
            assert bot["content"] in (str(c), f"{a}{op}{b}={c}"), (user, bot)
            assert (a, op, b) not in held and not is_held_out(a, op, b, SEED, SHARE)
            assert (op, frozenset((a, b))) not in held_pairs, f"{b}{op}{a} is held out, {user} is in training"
            phrasings.add(which)
            negative_operand += a < 0
            negative_answer += c < 0
            problems += 1
            prev = c
    assert len(phrasings) == len(PATTERNS)  # every phrasing occurs
    assert min(turns) == 1 and max(turns) == 4  # single- and multi-turn dialogues
    assert negative_answer > 0.15 * problems and negative_operand > 0.01 * problems


def test_generation_is_seeded(tmp_path):
    make_dataset(tmp_path / "a", n_train=50, n_eval=20)
    make_dataset(tmp_path / "b", n_train=50, n_eval=20)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
