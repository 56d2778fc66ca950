"""binidx (Megatron/fairseq MMapIndexedDataset) reader and writer, and the official sampling
arithmetic (docs/model-spec.md §6).

Reader: honours the dtype code (§6.1: official RWKV data is uint16, other tools write int32), checks
the header and that `.bin` holds exactly what `.idx` describes, and memory-maps lazily so a reader
pickles by path (DataLoader workers never copy the token array).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from ..atomic import commit_file
from ..errors import DataError

MAGIC = b"MMIDIDX\x00\x00"  # docs/model-spec.md §6.1
VERSION = 1
# docs/model-spec.md §6.1 dtype codes. 6/7 are float types that differ between implementations; never tokens.
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
HEADER = 34  # 9 magic + 8 version + 1 dtype + 8 n + 8 d (docs/model-spec.md §6.1)
MINI_EPOCH = 40320  # docs/model-spec.md §6.2: samples per mini-epoch (= 8!)


def strip_prefix(path: str | Path) -> str:
    s = str(path)
    for ext in (".bin", ".idx"):
        if s.endswith(ext):
            return s[: -len(ext)]
    return s


class BinIdxReader:
    """Items (documents) of a .bin/.idx pair; `tokens()` is the flat stream the official sampler uses."""

    def __init__(self, prefix: str | Path):
        self.prefix = strip_prefix(prefix)
        self.idx_path, self.bin_path = self.prefix + ".idx", self.prefix + ".bin"
        for p in (self.idx_path, self.bin_path):
            if not os.path.isfile(p):
                raise DataError(f"binidx: {p} does not exist; data.origin.source_data_files must be the path "
                                "prefix of a .bin/.idx pair (without the extension)")
        self._read_index()
        self._bin = None

    def _read_index(self) -> None:
        size = os.path.getsize(self.idx_path)
        with open(self.idx_path, "rb") as f:
            head = f.read(HEADER)
            if len(head) < HEADER or head[:9] != MAGIC:
                raise DataError(f"binidx: {self.idx_path} is not a binidx index (bad magic header); "
                                "rebuild it with `python -m rwkv.data.make_data`")
            version, code, n, d = struct.unpack("<QBQQ", head[9:])
            if version != VERSION:
                raise DataError(f"binidx: {self.idx_path} has index version {version}, expected 1")
            if code not in DTYPES:
                raise DataError(f"binidx: {self.idx_path} has dtype code {code}, which is not an integer "
                                f"token type (known: {sorted(DTYPES)})")
            need = HEADER + 12 * n + 8 * d
            if size < need:
                raise DataError(f"binidx: {self.idx_path} is truncated ({size} bytes, its header needs "
                                f"{need}); rebuild it")
            self.dtype = np.dtype(DTYPES[code])
            self.sizes = np.frombuffer(f.read(4 * n), dtype="<i4")
            self.pointers = np.frombuffer(f.read(8 * n), dtype="<i8")
            self.doc_idx = np.frombuffer(f.read(8 * d), dtype="<i8")
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        expect = self.num_tokens * self.dtype.itemsize
        actual = os.path.getsize(self.bin_path)
        if actual != expect:
            raise DataError(f"binidx: {self.bin_path} has {actual} bytes but {self.idx_path} describes "
                            f"{expect} ({self.num_tokens} tokens of {self.dtype.name}); the pair is "
                            "truncated or mismatched, rebuild it")
        if len(self.sizes) and (self.pointers[0] != 0 or np.any(
                np.diff(self.pointers) != self.sizes[:-1].astype(np.int64) * self.dtype.itemsize)):
            raise DataError(f"binidx: {self.idx_path} pointers do not match its sizes; rebuild it")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_bin"] = None
        return state

    def tokens(self) -> np.ndarray:
        """The whole .bin as a read-only memory map (one flat token stream, docs/model-spec.md §6.2)."""
        if self._bin is None:
            if self.num_tokens == 0:
                self._bin = np.zeros(0, dtype=self.dtype)
            else:
                self._bin = np.memmap(self.bin_path, dtype=self.dtype, mode="r")
        return self._bin

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return np.asarray(self.tokens()[start : start + int(self.sizes[i])])


class BinIdxWriter:
    """Writes items, then the index; both files appear only on `close()` (atomic rename)."""

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.prefix = strip_prefix(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODES:
            raise ValueError(f"binidx cannot store dtype {self.dtype}")
        self._tmp_bin = f"{self.prefix}.bin.tmp-{os.getpid()}"
        self._bin = open(self._tmp_bin, "wb")
        self.sizes: list[int] = []
        self.doc_idx: list[int] = [0]

    def add_item(self, tokens, end_document: bool = True) -> None:
        arr = np.asarray(tokens)
        info = np.iinfo(self.dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"token ids outside {self.dtype.name}; write with a wider dtype")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes())
        self.sizes.append(int(arr.size))
        if end_document:
            self.doc_idx.append(len(self.sizes))

    def close(self) -> None:
        self._bin.close()
        sizes = np.asarray(self.sizes, dtype="<i4")
        pointers = np.zeros(len(sizes), dtype="<i8")
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.asarray(self.doc_idx, dtype="<i8")
        tmp_idx = f"{self.prefix}.idx.tmp-{os.getpid()}"
        with open(tmp_idx, "wb") as f:
            f.write(MAGIC + struct.pack("<QBQQ", VERSION, CODES[self.dtype], len(sizes), len(doc_idx)))
            f.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
        commit_file(self._tmp_bin, self.prefix + ".bin")
        commit_file(tmp_idx, self.prefix + ".idx")

    def abort(self) -> None:
        self._bin.close()
        if os.path.exists(self._tmp_bin):
            os.remove(self._tmp_bin)


def token_dtype(vocab_size: int):
    """uint16 like official RWKV data when every id fits, else int32 (docs/model-spec.md §6.1)."""
    return np.uint16 if vocab_size <= 65536 else np.int32


# ---------------------------------------------------------------------------------------------
# Official sampler arithmetic (docs/model-spec.md §6.2)

def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (these bases suffice)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def magic_prime(data_size: int, ctx_len: int) -> int:
    """Largest prime p ≡ 2 (mod 3) with p <= data_size//ctx_len - 1 (compute_magic_prime.py, §6.2)."""
    p = data_size // ctx_len - 1
    while p >= 2:
        if p % 3 == 2 and is_prime(p):
            return p
        p -= 1
    raise DataError(f"binidx: {data_size} tokens hold fewer than 3 windows of ctx_len {ctx_len}; "
                    "no magic_prime exists (use more data or a smaller model.segments.ctx_len)")


def check_magic_prime(p: int, data_size: int, ctx_len: int) -> str | None:
    """Errors as DataError; returns a warning string when the official 0.9 ratio check would fail."""
    if not is_prime(p) or p % 3 != 2:
        raise DataError(f"data.loader.magic_prime: {p} must be a prime with p % 3 == 2 (docs/model-spec.md §6.2); "
                        f"leave it null to compute {magic_prime(data_size, ctx_len)}")
    chunks = data_size // ctx_len
    if p > chunks - 1:
        raise DataError(f"data.loader.magic_prime: {p} exceeds data_size//ctx_len - 1 = {chunks - 1}: windows would "
                        "read past the end of the data")
    if not 0.9 < p / chunks <= 1:
        return (f"magic_prime {p} uses only {p / chunks:.0%} of the {chunks} windows (the official "
                "trainer asserts > 90%)")
    return None


def golden_factor(p: int) -> int:
    """φ = int(p·(√5−1)/2), computed in double precision then truncated, as the official code does."""
    return int(p * (math.sqrt(5) - 1) / 2)


def official_offset(ii: int, p: int, ctx_len: int, phi: int | None = None) -> int:
    """Start token of sample counter ii: ((φ · (ii³ mod p)) mod p) · ctx_len, exact integers."""
    phi = golden_factor(p) if phi is None else phi
    return (phi * pow(ii, 3, p)) % p * ctx_len
