"""binidx layout, round trip, magic_prime and the official offsets (docs/model-spec.md §6)."""

import json
import struct

import numpy as np
import pytest

from rwkv.data.binidx import (
    MAGIC,
    BinIdxReader,
    BinIdxWriter,
    check_magic_prime,
    golden_factor,
    is_prime,
    magic_prime,
    official_offset,
)
from rwkv.errors import DataError


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4), (np.uint8, 1), (np.int64, 5),
                                        (np.int16, 3)])
def test_round_trip_and_header_layout(tmp_path, dtype, code):
    rng = np.random.default_rng(0)
    items = [rng.integers(0, 100, size=n).astype(dtype) for n in (3, 0, 7, 1)]
    w = BinIdxWriter(tmp_path / "x", dtype)
    for it in items:
        w.add_item(it)
    w.close()
    raw = (tmp_path / "x.idx").read_bytes()
    # docs/model-spec.md §6.1: magic, version 1, dtype code, n, d, sizes, pointers, doc_idx
    assert raw[:9] == MAGIC
    version, dcode, n, d = struct.unpack("<QBQQ", raw[9:34])
    assert (version, dcode, n, d) == (1, code, 4, 5)
    isz = np.dtype(dtype).itemsize
    assert np.frombuffer(raw[34:50], "<i4").tolist() == [3, 0, 7, 1]
    assert np.frombuffer(raw[50:82], "<i8").tolist() == [0, 3 * isz, 3 * isz, 10 * isz]
    assert np.frombuffer(raw[82:], "<i8").tolist() == [0, 1, 2, 3, 4]
    assert (tmp_path / "x.bin").stat().st_size == 11 * isz
    r = BinIdxReader(str(tmp_path / "x") + ".bin")  # the extension is accepted and stripped
    assert r.dtype == np.dtype(dtype) and len(r) == 4 and r.num_tokens == 11
    for a, b in zip(items, (r[i] for i in range(4))):
        assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)
    assert np.array_equal(r.tokens(), np.concatenate(items))


def test_reader_pickles_without_the_token_array(tmp_path):
    import pickle

    w = BinIdxWriter(tmp_path / "x")
    w.add_item(np.arange(1000))
    w.close()
    r = BinIdxReader(tmp_path / "x")
    r.tokens()
    blob = pickle.dumps(r)
    assert len(blob) < 2000 and np.array_equal(pickle.loads(blob)[0], np.arange(1000))


def test_writer_rejects_ids_outside_dtype(tmp_path):
    w = BinIdxWriter(tmp_path / "x", np.uint16)
    with pytest.raises(ValueError, match="wider dtype"):
        w.add_item(np.array([70000]))
    w.abort()
    assert not list(tmp_path.iterdir())


def test_magic_prime_matches_official_examples():
    # docs/model-spec.md §6.2: minipile (1,498,226,207 tokens) and the Pile (332,115,325,534 tokens)
    assert magic_prime(1_498_226_207, 512) == 2926181
    assert magic_prime(1_498_226_207, 4096) == 365759
    assert magic_prime(332_115_325_534, 4096) == 81082817
    for p in (2926181, 365759, 81082817):
        assert is_prime(p) and p % 3 == 2
    assert not is_prime(2926183) and is_prime(2) and not is_prime(1)


def test_check_magic_prime():
    assert check_magic_prime(2926181, 1_498_226_207, 512) is None
    with pytest.raises(DataError, match="must be a prime with p % 3 == 2"):
        check_magic_prime(2926183, 1_498_226_207, 512)
    with pytest.raises(DataError, match="exceeds"):
        check_magic_prime(11, 100, 10)
    assert "uses only" in check_magic_prime(5, 100, 10)


def test_official_first_offsets():
    p = 2926181
    assert golden_factor(p) == 1808479
    assert [official_offset(ii, p, 512) for ii in range(1, 6)] == [925941248, 1414711296, 1029138944,
                                                                  830257664, 380896256]


def test_exact_integer_arithmetic_for_huge_counters():
    p = 81082817
    ii = 10**7  # ii³ = 1e21 > 2⁶⁴
    assert official_offset(ii, p, 4096) == (golden_factor(p) * (ii ** 3 % p)) % p * 4096


def test_permutation_visits_every_window_once():
    p = 2003  # prime, 2003 % 3 == 2
    assert is_prime(p) and p % 3 == 2
    chunks = [official_offset(ii, p, 1) for ii in range(1, p)]
    assert sorted(chunks) == list(range(1, p))  # chunk 0 is never used
    assert json.dumps(chunks[:3])  # deterministic plain ints
