"""The World vocabulary file and its reader (rwkv/data/world_trie.py). The trie's encodings are compared with
the fast World tokenizer in tests/data/test_tokenizers.py."""

from rwkv.data.world_trie import parse_vocab, world_vocab_path


def test_world_vocab_file_facts():
    table = parse_vocab(world_vocab_path())
    assert len(table) == 65529 and min(table) == 1 and max(table) == 65529  # id 0 is not in the file
    assert all(table[b + 1] == bytes([b]) for b in range(256))  # single bytes: id = byte + 1
