"""The sampler, rwkv/tools/sample.py (`dragon_test.py`, `python -m rwkv sample`), in process on a tiny model."""

import pytest

from rwkv.__main__ import COMMANDS
from rwkv.model import save_pth
from rwkv.tools.sample import main
from tests.support.models import random_model


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "m.pth"
    save_pth(random_model(n_layer=1, n_embd=64, vocab_size=320, head_size=16), path, dtype="fp32")
    return path


def test_greedy_sampling_repeats_and_starts_with_the_prompt(pth, capsys):
    args = [str(pth), "--tokens", "5", "--prompt", "ab", "--temperature", "0", "--tokenizer", "bytes",
            "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args) == 0
    second = capsys.readouterr()
    assert first.out.startswith("ab") and first.out == second.out
    assert "x070 L1 D64 V320" in first.err and "[5 tokens in" in first.err


def test_a_missing_model_is_a_user_error_without_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "none.pth"), "--tokenizer", "bytes"]) == 2
    assert capsys.readouterr().err.startswith("dragon_test.py: ")


def test_the_sample_command_runs_this_module():
    assert COMMANDS["sample"] == ("rwkv.tools.sample", False)
