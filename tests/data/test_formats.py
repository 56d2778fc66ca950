"""Every record format and its loss mask (docs/data.md "Formats and masks"), with the `bytes` tokenizer so
that a learned token is easy to read: `learned_text` shows learned tokens as text and masked ones as '_'."""

import numpy as np
import pytest

from rwkv.data.config import DataConfig
from rwkv.data.formats import RecordFormatter, RowError, learned_targets
from rwkv.data.tokenizers import get_tokenizer
from rwkv.errors import DataError
from tests.data.util import learned_text, text_of


def run(records, **kw):
    cols = sorted({k for r in records for k in r})
    cfg = DataConfig.from_keys(data_path="unused", **kw)
    fmt = RecordFormatter(cfg, get_tokenizer("bytes"), cols)
    batch = {c: [r.get(c) for r in records] for c in fmt.columns}
    flat, mask, off, learned = fmt(batch, 0)
    rows = [(flat[off[i]:off[i + 1]].tolist(), mask[off[i]:off[i + 1]].tolist()) for i in range(len(records))]
    return fmt, rows, learned


def test_plain_text_all_learned_with_eod():
    fmt, rows, learned = run([{"text": "ab"}, {"text": "xyz"}])
    assert fmt.kind == "text"
    assert [text_of(r[0]) for r in rows] == ["ab|", "xyz|"]
    assert [r[1] for r in rows] == [[1, 1, 1], [1, 1, 1, 1]]
    assert learned.tolist() == [2, 3]  # position 0 is never a target


def test_custom_text_key_takes_priority():
    fmt, rows, _ = run([{"code": "x=1", "text": "ignored", "prompt": "p", "completion": "c"}],
                       custom_text_key="code")
    assert fmt.kind == "text" and text_of(rows[0][0]) == "x=1|"


def test_eod_configurable_and_optional():
    _, rows, _ = run([{"text": "ab"}], eod_token_id=7)
    assert rows[0][0][-1] == 7
    _, rows, _ = run([{"text": "ab"}], eod_token_id=None)
    assert text_of(rows[0][0]) == "ab"


def test_prompt_completion_masks_prompt():
    fmt, rows, _ = run([{"prompt": "Q?", "completion": " A."}])
    assert fmt.kind == "prompt_completion"
    assert learned_text(*rows[0]) == "__ A.|"
    _, rows, _ = run([{"prompt": "Q?", "completion": " A."}], disable_prompt_completion_mask=True)
    assert learned_text(*rows[0]) == "Q? A.|"


def test_multi_column_alpaca_default():
    rec = {"instruction": "Add", "input": "1 2", "output": "3"}
    fmt, rows, _ = run([rec])
    assert fmt.kind == "multi_column"
    assert text_of(rows[0][0]) == "Instruction:\nAdd\n\nInput:\n1 2\n\nOutput:\n3|"
    # input (and the separator before it) masked; instruction, output and eod learned
    assert learned_text(*rows[0]) == "Instruction:\nAdd" + "_" * len("\n\nInput:\n1 2") + "\n\nOutput:\n3|"


def test_multi_column_custom_keys_prefix_suffix_mask_separator():
    rec = {"q": "why", "a": "because", "other": "x"}
    _, rows, _ = run([rec], multi_column_keys=["q", "a"], multi_column_prefix=["Q: ", "A: "],
                     multi_column_suffix=["?", "."], multi_column_train_mask=[False, True],
                     multi_column_separator=" // ")
    assert text_of(rows[0][0]) == "Q: why? // A: because.|"
    assert learned_text(*rows[0]) == "_" * len("Q: why?") + " // A: because.|"


def test_multi_column_needs_two_non_empty_columns():
    _, rows, learned = run([{"instruction": "only this", "input": "", "output": None}])
    assert text_of(rows[0][0]) == "|" and learned.tolist() == [0]  # dropped later (nothing to learn)


def test_multi_column_disabled_with_empty_list_falls_back_to_text():
    fmt, _, _ = run([{"instruction": "a", "output": "b", "text": "t"}], multi_column_keys=[])
    assert fmt.kind == "text"


def test_iopairs_defaults_and_end_of_conversation():
    rec = {"conversation": [{"input": "hi", "output": "hello"}, {"input": "bye", "output": "ciao"}]}
    fmt, rows, _ = run([rec], conversation_format="iopairs", conversation_end_of_conversation="User:")
    assert fmt.kind == "iopairs"
    assert text_of(rows[0][0]) == "User: hi\n\nAssistant: hello\n\nUser: bye\n\nAssistant: ciao\n\nUser:|"
    assert learned_text(*rows[0]) == ("_" * 10 + "Assistant: hello\n\n" + "_" * 11
                                      + "Assistant: ciao\n\nUser:|")


def test_iopairs_custom_prefix_mask_suffix():
    rec = {"turns": [{"instruction": "do", "response": "done"}]}
    _, rows, _ = run([rec], conversation_format="iopairs", conversation_key="turns",
                     conversation_input_key_prefix_map={"instruction": "### I: ", "response": "### R: "},
                     conversation_input_key_mask={"instruction": False, "response": True},
                     conversation_sender_suffix={"instruction": "\n", "response": "\n"})
    assert learned_text(*rows[0]) == "_" * len("### I: do\n") + "### R: done\n|"


def test_sender_format():
    rec = {"conversation": [{"sender": "user", "message": "hi"}, {"sender": "bot", "message": "yo"},
                            {"sender": "user", "message": "ok", "context": "ignored"}]}
    _, rows, _ = run([rec], conversation_format="sender",
                     conversation_sender_value_map={"user": "User", "bot": "Bot"},
                     conversation_sender_mask={"user": False})
    assert text_of(rows[0][0]) == "User: hi\n\nBot: yo\n\nUser: ok\n\n|"
    # the conversation ends with a masked user turn, so its end-of-document token is masked too
    assert learned_text(*rows[0]) == "_" * 10 + "Bot: yo\n\n" + "_" * 11


def test_messages_default_rwkv_template_and_masks():
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}]}
    fmt, rows, _ = run([rec])  # detected from the `messages` column
    assert fmt.kind == "messages"
    assert text_of(rows[0][0]) == "System: Be brief.\n\nUser: hi\n\nAssistant: hello\n\n|"
    # "Assistant:" is the prompt; " hello\n\n" and the end of document are learned
    assert learned_text(*rows[0]).endswith("_" * len("Assistant:") + " hello\n\n|")
    assert learned_text(*rows[0]).count("_") == len("System: Be brief.\n\nUser: hi\n\nAssistant:")


def test_messages_role_map_and_mask():
    rec = {"chat": [{"role": "user", "content": "2+2"}, {"role": "tool", "content": "4"}]}
    _, rows, _ = run([rec], conversation_format="messages", conversation_key="chat",
                     conversation_role_map={"tool": "Tool"}, conversation_role_mask={"tool": True})
    assert learned_text(*rows[0]) == "_" * len("User: 2+2\n\nTool:") + " 4\n\n|"


def test_messages_unknown_role_is_row_error():
    with pytest.raises(RowError, match="role 'tool'.*conversation_role_map"):
        run([{"messages": [{"role": "tool", "content": "x"}]}])


def test_wrong_type_is_row_error_naming_record_and_column():
    with pytest.raises(RowError, match=r"record 1, column 'text': expected a string, got list"):
        run([{"text": "fine"}, {"text": ["not", "a", "string"]}])
    with pytest.raises(RowError, match="expected a list of turns"):
        run([{"messages": "hello"}], conversation_format="messages")


def test_missing_text_column_error_lists_columns():
    with pytest.raises(DataError, match=r"no text column.*\['body', 'id'\].*custom_text_key"):
        run([{"body": "x", "id": 1}])
    with pytest.raises(DataError, match="data.format.custom_text_key: column 'nope'"):
        run([{"text": "x"}], custom_text_key="nope")


def test_unpaired_surrogate_is_row_error():
    with pytest.raises(RowError, match="record 0.*not valid Unicode"):
        run([{"text": "bad \ud800 text"}])


def test_learned_targets_excludes_position_zero():
    mask = np.array([1, 1, 0, 1, 0, 0], dtype=np.int8)
    assert learned_targets(mask, np.array([0, 3, 6])).tolist() == [1, 0]
    assert learned_targets(mask, np.array([0, 0, 6])).tolist() == [0, 2]  # empty row


@pytest.mark.parametrize("eod", [0, None])
def test_learned_counts_match_the_masks(eod):
    rng = np.random.default_rng(0)
    pick = lambda: rng.choice(["", "a", "bc", "def g"])  # noqa: E731
    records = [{"q": pick(), "x": pick(), "a": pick()} for _ in range(300)]
    cols = ["a", "q", "x"]
    cfg = DataConfig.from_keys(data_path="unused", multi_column_keys=["q", "x", "a"],
                               multi_column_train_mask=[False, True, False], multi_column_separator="|",
                               eod_token_id=eod)
    fmt = RecordFormatter(cfg, get_tokenizer("bytes"), cols)
    flat, mask, off, learned = fmt({c: [r[c] for r in records] for c in cols}, 0)
    assert len(flat) == len(mask) == off[-1]
    assert learned.tolist() == learned_targets(mask, off).tolist()
