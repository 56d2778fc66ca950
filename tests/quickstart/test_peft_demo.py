"""The PEFT demo's data (rwkv/quickstart/peft_demo.py): every chat opens with a follow-up on the implicit
previous answer 42 and answers it right, no held-out opener (nor held-out quickstart problem) is trained
on, and no chat has a learned token in the first segment of the long-sample config (what makes `bptt:
truncated` give the learned state no gradient, docs/tbptt.md "State tuning"). The training runs themselves
are measured in docs/benchmarks.md, not here."""

import json
import re

import yaml

from rwkv.data.config import DataConfig
from rwkv.data.formats import RecordFormatter
from rwkv.data.tokenizers import get_tokenizer
from rwkv.quickstart.arithmetic import is_held_out
from rwkv.quickstart.peft_demo import HELD_OUT_SHARE, LONG_CTX, PREVIOUS, SEED, make_data, opener_held_out
from tests.conftest import ROOT
from tests.quickstart.test_arithmetic import parse

CONFIGS = ["peft-demo-full", "peft-demo-lora", "peft-demo-state", "peft-demo-long-state"]
OPENER = re.compile(r"^(?:And ([+-])|Then (add|subtract) )(\d+)[?.]$")


def load(name):
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def opener(user):
    m = OPENER.match(user)
    return (m[1] or ("+" if m[2] == "add" else "-")), int(m[3])


def test_chats_open_on_the_implicit_answer_and_exclude_held_out(tmp_path):
    counts = make_data(tmp_path, n_train=1500, n_base_eval=100)
    assert counts["train"] == 1500 and counts["base_eval"] == 100 and 60 < counts["eval"] < 140
    openers = set()
    for line in open(tmp_path / "train.jsonl"):
        messages = json.loads(line)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        op, b = opener(messages[0]["content"])
        assert not opener_held_out(op, b)
        openers.add((op, b))
        prev = PREVIOUS
        for user, bot in zip(messages[::2], messages[1::2]):
            (a, o, c), _ = parse(user["content"], prev)
            assert bot["content"].endswith(str(a + c if o == "+" else a - c))
            if user is not messages[0]:  # later turns: no quickstart held-out problem, nothing with 42
                assert not is_held_out(a, o, c, SEED, HELD_OUT_SHARE) and PREVIOUS not in (a, c)
            prev = a + c if o == "+" else a - c
    assert len(openers) > 120  # most non-held-out openers occur
    rows = [json.loads(line) for line in open(tmp_path / "eval.jsonl")]
    for r in rows:
        op, b = opener(re.fullmatch(r"Q: (.*)\n\nA:", r["prompt"])[1])
        assert opener_held_out(op, b) and (op, b) not in openers
        assert r["answer"] == str(PREVIOUS + b if op == "+" else PREVIOUS - b)
    for line in open(tmp_path / "base_eval.jsonl"):
        r = json.loads(line)
        m = re.fullmatch(r"Q: (\d+)([+-])(\d+)=\n\nA:", r["prompt"])
        assert is_held_out(int(m[1]), m[2], int(m[3]), SEED, HELD_OUT_SHARE)


def test_long_samples_learn_nothing_in_the_first_segment(tmp_path):
    make_data(tmp_path, n_train=300, n_base_eval=10)
    cfg = load("peft-demo-long-state")
    assert cfg["model"]["segments"]["ctx_len"] == LONG_CTX and not cfg["data"]["rows"]["packing_enable"]
    data = DataConfig(**cfg["data"])
    fmt = RecordFormatter(data, get_tokenizer(data.tokenizer), ["messages"])
    records = [json.loads(line)["messages"] for line in open(tmp_path / "train.jsonl")]
    ids, mask, offsets, learned = fmt({"messages": records}, 0)
    for i in range(len(records)):
        row = mask[offsets[i]:offsets[i + 1]]
        # targets 1..ctx_len are predicted inside the first segment: none may be learned; later ones are
        assert not row[:LONG_CTX + 1].any() and row[LONG_CTX + 1:].any() and learned[i] > 0


def test_demo_configs_share_data_and_budget():
    """The three part-1 runs differ only in what trains (and its lr): the comparison is like for like."""
    full, lora, state, long = (load(n) for n in CONFIGS)
    for cfg in (lora, state):
        assert cfg["data"] == full["data"]
        assert {k: v for k, v in cfg["trainer"].items() if k != "default_root_dir"} == \
            {k: v for k, v in full["trainer"].items() if k != "default_root_dir"}
        assert cfg["model"]["load_model"] == full["model"]["load_model"] == long["model"]["load_model"]
    assert long["data"]["origin"]["source_data_files"] == full["data"]["origin"]["source_data_files"]
    assert "peft" not in full["model"] and lora["model"]["peft"]["lora"] and state["model"]["peft"]["state_tuning"]
    assert long["model"]["peft"] == {"state_tuning": True, "state_lr": state["model"]["peft"]["state_lr"]}
