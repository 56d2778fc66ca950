"""Pure-Python reference for the RWKV World tokenizer `rwkv_vocab_v20230424` (docs/model-spec.md §5.1).

This is the slow, obviously-correct reference the fast path (`pyrwkv-tokenizer`, Rust) is tested
against, and the tokenizer of the single-process baseline in `bench/preload.py`. Written from the
spec: greedy longest-prefix match over the UTF-8 bytes with a byte trie; no BPE, no normalisation,
no special tokens. Id 0 is not in the vocab file: it is the end-of-document separator.
"""

from __future__ import annotations

import ast
from pathlib import Path

# Model vocab rows for the world tokenizer (docs/model-spec.md §5.1: ids 1..65529 used, padded to 65536).
WORLD_VOCAB_SIZE = 65536
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"


def world_vocab_path() -> Path:
    """The vocab file shipped inside the `pyrwkv_tokenizer` wheel (LF copy, docs/model-spec.md §5.1)."""
    import importlib.util

    spec = importlib.util.find_spec("pyrwkv_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the world tokenizer needs the `pyrwkv-tokenizer` package (it ships "
            f"{WORLD_VOCAB_FILE}); install it with `pip install pyrwkv-tokenizer==0.9.1`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WORLD_VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the pyrwkv-tokenizer install; reinstall it")
    return path


def parse_vocab(path: str | Path) -> dict[int, bytes]:
    """Parse `<id> <python literal> <byte_length>` lines (docs/model-spec.md §5.1); CRLF and LF copies parse alike."""
    table: dict[int, bytes] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line:
                continue
            first, last = line.index(" "), line.rindex(" ")
            idx = int(line[:first])
            lit = ast.literal_eval(line[first + 1 : last])
            tok = lit.encode("utf-8") if isinstance(lit, str) else lit
            if len(tok) != int(line[last + 1 :]):
                raise ValueError(f"{path}:{lineno}: byte length {line[last + 1:]} != {len(tok)}")
            table[idx] = tok
    return table


class WorldTrie:
    """Greedy longest-match byte trie. Nodes are dicts byte -> child; the id sits under key -1."""

    def __init__(self, vocab_path: str | Path | None = None):
        self.idx2bytes = parse_vocab(vocab_path or world_vocab_path())
        self.root: dict = {}
        for idx, tok in self.idx2bytes.items():
            node = self.root
            for byte in tok:
                node = node.setdefault(byte, {})
            node[-1] = idx

    def encode_bytes(self, data: bytes) -> list[int]:
        out: list[int] = []
        root, n, i = self.root, len(data), 0
        while i < n:
            node, j, best, best_end = root, i, None, i
            while j < n:
                node = node.get(data[j])
                if node is None:
                    break
                j += 1
                tid = node.get(-1)
                if tid is not None:
                    best, best_end = tid, j
            # Every single byte is a token (ids 1..256), so `best` is always found.
            out.append(best)
            i = best_end
        return out

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode_bytes(self, ids: list[int]) -> bytes:
        # Id 0 (end of document) and the padding ids 65530..65535 carry no bytes.
        get = self.idx2bytes.get
        return b"".join(get(i, b"") for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
