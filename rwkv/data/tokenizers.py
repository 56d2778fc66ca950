"""Tokenizers behind one small interface (docs/model-spec.md §5).

`get_tokenizer(name_or_path)` returns an object with `encode(str) -> list[int]`,
`encode_batch(list[str]) -> list[list[int]]`, `decode(list[int]) -> str`, `vocab_size` (the padded
model vocab, what `model.vocab_size` must be), `eod_id` (0, the end-of-document separator), `name`
and `identity()` (a string that changes whenever the ids could change; part of the preload cache key).

Every tokenizer here pickles cheaply: the heavy backend (the Rust `pyrwkv_tokenizer` object cannot
be pickled at all: pickling it raises) is created lazily on first use in each process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DataError
from .world_trie import WORLD_VOCAB_SIZE, parse_vocab, world_vocab_path

# docs/model-spec.md §5.2: the 20B tokenizer has 50277 ids; the RWKV-7 Pile demo pads the model vocab to 50304.
NEOX_VOCAB_SIZE = 50304
NEOX_FILE = "20B_tokenizer.json"
NEOX_SHA256 = "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"
# No installed wheel ships 20B_tokenizer.json (docs/model-spec.md §5.2); this is where the project looks for it.
NEOX_SEARCH_PATHS: list[Path] = [Path(__file__).resolve().parent / "vocab" / NEOX_FILE]
# `bytes`: id = byte + 1 (like the world tokenizer's single-byte ids 1..256), 0 = end of document;
# 257 ids padded to 320, the next multiple of 64 (the rounding used for every HF tokenizer too).
BYTES_VOCAB_SIZE = 320
VOCAB_MULTIPLE = 64


def _round_up(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """Base class: subclasses set `name`, `vocab_size` and implement `_encode_one`/`decode`."""

    name: str = ""
    vocab_size: int = 0
    eod_id: int = 0

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def identity(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class WorldTokenizer(Tokenizer):
    """rwkv_vocab_v20230424 through pyrwkv-tokenizer (docs/model-spec.md §5.1); decoding uses the vocab table,
    because pyrwkv's decode panics on ids whose bytes are not valid UTF-8 on their own."""

    name = "world"
    vocab_size = WORLD_VOCAB_SIZE

    def __init__(self):
        self._fast = None
        self._table = None

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def _backend(self):
        if self._fast is None:
            import pyrwkv_tokenizer

            self._fast = pyrwkv_tokenizer.RWKVTokenizer()
        return self._fast

    def encode_batch(self, texts):
        enc = self._backend().encode
        return [enc(t) for t in texts]

    def decode(self, ids) -> str:
        if self._table is None:
            self._table = parse_vocab(world_vocab_path())
        get = self._table.get
        return b"".join(get(int(i), b"") for i in ids).decode("utf-8", errors="replace")

    def identity(self) -> str:
        return f"world:{file_sha256(world_vocab_path())}"


class BytesTokenizer(Tokenizer):
    """One token per UTF-8 byte (id = byte + 1) for tiny CPU models; 0 = end of document."""

    name = "bytes"
    vocab_size = BYTES_VOCAB_SIZE

    def encode_batch(self, texts):
        return [[b + 1 for b in t.encode("utf-8")] for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) - 1 for i in ids if 1 <= int(i) <= 256).decode("utf-8", errors="replace")

    def identity(self) -> str:
        return "bytes:v1"


class JsonTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` through the `tokenizers` library (this is how `neox` loads)."""

    def __init__(self, path: str | Path, name: str | None = None, vocab_size: int | None = None):
        self.path = str(path)
        self.name = name or self.path
        self._tok = None
        self.vocab_size = vocab_size or _round_up(self._backend().get_vocab_size(with_added_tokens=True))

    def __getstate__(self):
        return {"path": self.path, "name": self.name, "vocab_size": self.vocab_size, "_tok": None}

    def _backend(self):
        if self._tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._tok = HFTokenizer.from_file(self.path)
            except Exception as e:
                raise DataError(
                    f"data.format.tokenizer: {self.path} is not a readable tokenizer.json ({e}); "
                    "point data.format.tokenizer at a Hugging Face tokenizer.json file"
                ) from None
        return self._tok

    def encode_batch(self, texts):
        # No BOS/EOS: documents are separated by the pipeline's end-of-document token instead.
        return [e.ids for e in self._backend().encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._backend().decode([int(i) for i in ids], skip_special_tokens=False)

    def identity(self) -> str:
        return f"json:{file_sha256(self.path)}"


class HFDirTokenizer(Tokenizer):
    """A local Hugging Face tokenizer directory through `transformers.AutoTokenizer` (no downloads)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.name = self.path
        self._tok = None
        self.vocab_size = _round_up(len(self._backend()))

    def __getstate__(self):
        return {"path": self.path, "name": self.name, "vocab_size": self.vocab_size, "_tok": None}

    def _backend(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            try:
                self._tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            except Exception as e:
                raise DataError(
                    f"data.format.tokenizer: could not load a tokenizer from directory {self.path} ({e}); "
                    "it must hold tokenizer.json or tokenizer_config.json (as saved by save_pretrained)"
                ) from None
        return self._tok

    def encode_batch(self, texts):
        tok = self._backend()
        return [tok.encode(t, add_special_tokens=False) for t in texts]

    def decode(self, ids) -> str:
        return self._backend().decode([int(i) for i in ids])

    def identity(self) -> str:
        # Hash the tokenizer files only: the directory may also hold multi-GB model weights.
        h = hashlib.sha256()
        for p in sorted(Path(self.path).iterdir()):
            if p.is_file() and p.suffix in {".json", ".txt", ".model", ".tiktoken"}:
                if p.stat().st_size < 64 << 20:
                    h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
        return f"hfdir:{h.hexdigest()}"


def find_neox_file() -> Path | None:
    for p in NEOX_SEARCH_PATHS:
        if Path(p).is_file():
            return Path(p)
    return None


def get_tokenizer(name_or_path: str) -> Tokenizer:
    """`world`, `neox`, `bytes`, a tokenizer.json path, or a local HF tokenizer directory."""
    key = str(name_or_path).strip()
    if key == "world":
        world_vocab_path()  # fail early with an install hint if pyrwkv-tokenizer is missing
        return WorldTokenizer()
    if key == "bytes":
        return BytesTokenizer()
    if key in ("neox", "20B", "20B_tokenizer", NEOX_FILE):
        path = find_neox_file()
        if path is None:
            where = ", ".join(str(p) for p in NEOX_SEARCH_PATHS)
            raise DataError(
                f"data.format.tokenizer: neox needs {NEOX_FILE} (2,467,981 bytes, sha256 {NEOX_SHA256[:16]}…, "
                "from the BlinkDL/ChatRWKV repo root), which no installed package ships. "
                f"Put it at {where}, or set data.format.tokenizer to the path of your copy"
            )
        return JsonTokenizer(path, name="neox", vocab_size=NEOX_VOCAB_SIZE)
    path = Path(key).expanduser()
    if path.is_file():
        return JsonTokenizer(path)
    if path.is_dir():
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise DataError(
                f"data.format.tokenizer: directory {path} holds no tokenizer.json or tokenizer_config.json; "
                "point it at a Hugging Face tokenizer directory or a tokenizer.json file"
            )
        return HFDirTokenizer(path)
    raise DataError(
        f"data.format.tokenizer: unknown tokenizer {key!r} (no such file or directory). Use `world`, `neox`, "
        "`bytes`, the path of a tokenizer.json, or a local Hugging Face tokenizer directory"
    )


def tokenizer_vocab_size(name_or_path: str) -> int:
    """Padded model vocab without building any backend for the fixed names (cheap)."""
    key = str(name_or_path).strip()
    fixed = {"world": WORLD_VOCAB_SIZE, "bytes": BYTES_VOCAB_SIZE, "neox": NEOX_VOCAB_SIZE}
    if key in fixed:
        return fixed[key]
    return get_tokenizer(key).vocab_size


def tokenizer_for_vocab(vocab_size: int) -> str:
    """Guess the tokenizer name from a model's embedding rows (used by dragon_test).

    world: 65530..65536+ rows (docs/model-spec.md §5.1); neox: 50277..50304 (docs/model-spec.md §5.2); bytes: 257..320.
    """
    v = int(vocab_size)
    if 65530 <= v <= 65536 + VOCAB_MULTIPLE:
        return "world"
    if 50277 <= v <= NEOX_VOCAB_SIZE:
        return "neox"
    if 257 <= v <= BYTES_VOCAB_SIZE:
        return "bytes"
    raise ValueError(
        f"cannot guess the tokenizer of a model with vocab_size {v}: known sizes are world 65536, "
        "neox 50277/50304, bytes 257..320; name the tokenizer explicitly"
    )
