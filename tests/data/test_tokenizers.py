"""Tokenizers: world (pyrwkv) == spec vectors == the pure-Python trie; bytes; tokenizer.json; HF dir;
neox lookup; vocab sizes; pickling (docs/model-spec.md §5)."""

import pickle
import random

import pytest

from rwkv.data.tokenizers import (
    BYTES_VOCAB_SIZE,
    get_tokenizer,
    tokenizer_for_vocab,
    tokenizer_vocab_size,
)
from rwkv.data.world_trie import WorldTrie
from rwkv.errors import DataError

# docs/model-spec.md §5.1 test vectors (identical in `rwkv` pip and pyrwkv_tokenizer).
VECTORS = [
    ("Today is a beautiful day. 今天是美好的一天。",
     [33520, 4600, 332, 59219, 21509, 47, 33, 10381, 11639, 13091, 15597, 11685, 14734, 10250, 11639, 10080]),
    ("Hello world!\n\nUser: hi", [33155, 40213, 34, 261, 24281, 59, 4571]),
    (" " * 300 + "end", [65529, 65529, 65487, 7463]),
]


@pytest.fixture(scope="module")
def trie():
    return WorldTrie()


@pytest.fixture(scope="module")
def world():
    return get_tokenizer("world")


def _random_texts(n=200, seed=0):
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyz ", "ABCXYZ0123456789 .,;:!?'\"()[]{}\n\t",
             "今天是美好的一天。日本語のテキスト", "Привет мир ", "مرحبا بالعالم ", "🙂🚀👍🏽 ", "        ",
             "\r\n", "éèêëàç ", "def f(x):\n    return x\n"]
    out = []
    for _ in range(n):
        parts = [rng.choice(pools) for _ in range(rng.randint(1, 12))]
        text = "".join(rng.choice(p) if rng.random() < 0.5 else p for p in parts)
        out.append(text * rng.randint(1, 3))
    return out


@pytest.mark.parametrize("text,ids", VECTORS)
def test_world_matches_spec_vectors(world, trie, text, ids):
    assert world.encode(text) == ids
    assert trie.encode(text) == ids
    assert world.decode(ids) == text


def test_world_fast_equals_trie_reference(world, trie):
    texts = _random_texts()
    assert world.encode_batch(texts) == [trie.encode(t) for t in texts]
    for t in texts[:20]:
        assert world.decode(world.encode(t)) == t


def test_world_decode_partial_utf8_does_not_crash(world):
    ids = world.encode("今")
    assert len(ids) == 1
    # A lone continuation byte (id = byte + 1) decodes to U+FFFD instead of panicking like pyrwkv.
    assert world.decode([0x80 + 1]) == "\ufffd"
    assert world.decode([0] + ids + [0]) == "今"  # the end-of-document token carries no text


def test_world_pickles_after_use_and_still_works(world):
    world.encode("warm up the Rust backend")
    clone = pickle.loads(pickle.dumps(world))
    assert clone.encode("Hello world!\n\nUser: hi") == VECTORS[1][1]
    assert clone.vocab_size == 65536 and clone.eod_id == 0 and clone.name == "world"


def test_bytes_tokenizer():
    tok = get_tokenizer("bytes")
    assert tok.encode("aé") == [ord("a") + 1, 0xC3 + 1, 0xA9 + 1]
    assert tok.decode([0] + tok.encode("aé") + [0]) == "aé"
    assert tok.vocab_size == BYTES_VOCAB_SIZE == 320 and tok.eod_id == 0


def _train_bpe(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["hello world, hello tokenizer"] * 50, trainer)
    tok.save(str(path))
    return tok


def test_tokenizer_json_path(tmp_path):
    hf = _train_bpe(tmp_path / "tokenizer.json")
    tok = get_tokenizer(str(tmp_path / "tokenizer.json"))
    text = "hello world"
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size % 64 == 0 and tok.vocab_size >= hf.get_vocab_size()
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == tok.encode(text)
    assert tokenizer_vocab_size(str(tmp_path / "tokenizer.json")) == tok.vocab_size


def test_hf_tokenizer_directory(tmp_path):
    from transformers import PreTrainedTokenizerFast

    hf = _train_bpe(tmp_path / "raw.json")
    d = tmp_path / "tok_dir"
    PreTrainedTokenizerFast(tokenizer_object=hf, eos_token="<|endoftext|>").save_pretrained(str(d))
    tok = get_tokenizer(str(d))
    assert tok.encode("hello world") == hf.encode("hello world", add_special_tokens=False).ids
    assert tok.vocab_size == -(-len(hf.get_vocab()) // 64) * 64
    assert tok.identity().startswith("hfdir:")


def test_neox_missing_file_error_names_where_to_put_it(monkeypatch, tmp_path):
    import rwkv.data.tokenizers as T

    monkeypatch.setattr(T, "NEOX_SEARCH_PATHS", [tmp_path / "nowhere" / "20B_tokenizer.json"])
    with pytest.raises(DataError, match=r"20B_tokenizer\.json.*nowhere"):
        get_tokenizer("neox")
    # vocab_size stays cheap and known without the file (docs/model-spec.md §5.2 padding)
    assert tokenizer_vocab_size("neox") == 50304


def test_neox_found_in_search_path(monkeypatch, tmp_path):
    import rwkv.data.tokenizers as T

    _train_bpe(tmp_path / "20B_tokenizer.json")  # a stand-in file with the right name
    monkeypatch.setattr(T, "NEOX_SEARCH_PATHS", [tmp_path / "20B_tokenizer.json"])
    tok = get_tokenizer("neox")
    assert tok.name == "neox" and tok.vocab_size == 50304 and tok.eod_id == 0


def test_unknown_tokenizer_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="unknown tokenizer 'gpt5'"):
        get_tokenizer("gpt5")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no tokenizer.json"):
        get_tokenizer(str(tmp_path / "empty_dir"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable tokenizer.json"):
        get_tokenizer(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("v,name", [(65536, "world"), (65530, "world"), (50277, "neox"), (50304, "neox"),
                                    (257, "bytes"), (320, "bytes")])
def test_tokenizer_for_vocab(v, name):
    assert tokenizer_for_vocab(v) == name


def test_tokenizer_for_vocab_unknown():
    with pytest.raises(ValueError, match="cannot guess"):
        tokenizer_for_vocab(1000)
