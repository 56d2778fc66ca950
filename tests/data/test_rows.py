"""Packing, rechunking, sorting, filtering and splitting on a hand-made document table (docs/data.md "Rows")."""

import numpy as np
import pyarrow as pa
import pytest

from rwkv.data import rows as R
from rwkv.errors import DataError


def make_table(lengths, seed=0):
    """Document i = tokens (i+1)*1000 + position, ending with 0; mask 1 except a masked first token
    on odd documents."""
    docs, masks = [], []
    for i, n in enumerate(lengths):
        docs.append([(i + 1) * 1000 + t for t in range(n - 1)] + [0])
        masks.append([0 if (i % 2 and t == 0) else 1 for t in range(n)])
    table = pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32())),
                      "loss_mask": pa.array(masks, pa.list_(pa.int8()))})
    return R.TokenTable(table), np.asarray(lengths, dtype=np.int64), docs, masks


def read_rows(path):
    with pa.memory_map(str(path)) as src:
        t = pa.ipc.open_stream(src).read_all()
    return t.to_pylist()


def check_packed(rows, docs, order_docs, max_len):
    """Every document exactly once, intact, at its recorded offset; rows within max_len unless a
    single document is longer."""
    seen = []
    for r in rows:
        ids, offs = r["input_ids"], r["doc_offsets"]
        assert offs[0] == 0 and offs == sorted(offs) and len(r["loss_mask"]) == len(ids)
        assert len(ids) <= max_len or len(offs) == 1
        bounds = offs + [len(ids)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            doc = (ids[a] // 1000 - 1) if ids[a] else None
            if doc is None:  # a 1-token document is just [0]; find it by elimination below
                continue
            assert ids[a:b] == docs[doc]
            seen.append(doc)
    assert sorted(seen) == sorted(d for d in order_docs if len(docs[d]) > 1)


@pytest.mark.parametrize("in_sequence", [False, True])
def test_packing_keeps_documents_whole_and_records_boundaries(tmp_path, in_sequence):
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, 40, size=200).tolist() + [70, 64]  # two longer than max_len / exactly max
    table, lens, docs, _ = make_table(lengths)
    keep = np.arange(len(lengths))
    pack = R.pack_in_sequence if in_sequence else R.pack_best_fit
    order, bounds = pack(keep, lens, 64)
    assert sorted(order.tolist()) == keep.tolist()
    w = R.RowWriter(str(tmp_path / "p.arrow"), with_docs=True)
    R.write_rows(table, order, bounds, lens, w)
    stats = w.close()
    rows = read_rows(tmp_path / "p.arrow")
    check_packed(rows, docs, keep.tolist(), 64)
    assert stats["rows"] == len(rows) and stats["documents"] == len(keep)
    assert stats["tokens"] == sum(lengths)
    if in_sequence:  # dataset order is preserved
        firsts = [r["input_ids"][0] // 1000 - 1 for r in rows]
        assert firsts == sorted(firsts)
    else:  # best fit decreasing packs tightly: at most one row beyond the ideal, plus the oversize one
        assert len(rows) <= -(-sum(min(n, 64) for n in lengths) // 64) + 2


def test_best_fit_small_example():
    lens = np.array([5, 3, 4, 2, 6])
    order, bounds = R.pack_best_fit(np.arange(5), lens, 8)
    rows = [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    assert rows == [[4, 3], [0, 1], [2]]  # 6+2, 5+3, 4


def test_rechunk_cuts_exactly_and_records_document_starts(tmp_path):
    lengths = [5, 3, 10, 2, 7]
    table, lens, docs, masks = make_table(lengths)
    w = R.RowWriter(str(tmp_path / "r.arrow"), with_docs=True)
    R.write_rechunked(table, np.arange(5), lens, 8, w)
    rows = read_rows(tmp_path / "r.arrow")
    flat = [t for d in docs for t in d]
    assert [r["input_ids"] for r in rows] == [flat[i:i + 8] for i in range(0, len(flat), 8)]
    assert [r["loss_mask"] for r in rows] == [[m for d in masks for m in d][i:i + 8]
                                             for i in range(0, len(flat), 8)]
    # document starts 0, 5, 8, 18, 20 in the stream -> per row offsets (0 always first); 27 = 3x8 + 3
    assert [r["doc_offsets"] for r in rows] == [[0, 5], [0], [0, 2, 4], [0]]
    assert w.stats["documents"] == 5 and w.stats["tokens"] == 27


def test_rechunk_streams_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "BATCH_TOKENS", 16)  # force many carry-overs between batches
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 30, size=60).tolist()
    table, lens, docs, _ = make_table(lengths)
    w = R.RowWriter(str(tmp_path / "r.arrow"), with_docs=True)
    R.write_rechunked(table, np.arange(60), lens, 13, w)
    rows = read_rows(tmp_path / "r.arrow")
    flat = [t for d in docs for t in d]
    assert [t for r in rows for t in r["input_ids"]] == flat
    assert all(len(r["input_ids"]) == 13 for r in rows[:-1])
    starts = np.cumsum([0] + lengths[:-1])
    expect = [[0] + [int(s % 13) for s in starts if s // 13 == k and s % 13] for k in range(len(rows))]
    assert [r["doc_offsets"] for r in rows] == expect


def test_rechunk_drops_rows_without_targets(tmp_path):
    docs = [[5, 6, 7, 8], [9, 10, 11, 0]]
    masks = [[0, 0, 0, 0], [1, 1, 1, 1]]
    table = R.TokenTable(pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32())),
                                   "loss_mask": pa.array(masks, pa.list_(pa.int8()))}))
    w = R.RowWriter(str(tmp_path / "r.arrow"), with_docs=True)
    R.write_rechunked(table, np.arange(2), np.array([4, 4]), 4, w)
    rows = read_rows(tmp_path / "r.arrow")
    assert [r["input_ids"] for r in rows] == [[9, 10, 11, 0]]


def test_sort_rows_by_length(tmp_path):
    lengths = [5, 2, 9, 4]
    table, lens, docs, _ = make_table(lengths)
    order, bounds = R.sort_rows(*R.one_per_row(np.arange(4)), lens, ascending=True)
    assert order.tolist() == [1, 3, 0, 2]
    order, bounds = R.sort_rows(*R.one_per_row(np.arange(4)), lens, ascending=False)
    assert order.tolist() == [2, 0, 3, 1]
    # packed rows sort as units
    order, bounds = R.sort_rows(np.array([0, 1, 2, 3]), np.array([0, 2, 3, 4]), lens, ascending=True)
    assert order.tolist() == [3, 0, 1, 2] and bounds.tolist() == [0, 1, 3, 4]


def test_keep_mask_filters_and_reasons():
    lengths = np.array([1, 2, 5, 10, 3])
    learned = np.array([0, 1, 4, 9, 0])
    keep, why = R.keep_mask(lengths, learned, min_size=3, max_size=9)
    assert keep.tolist() == [False, False, True, False, False]
    assert why == {"shorter than 2 tokens": 1, "no learned token": 1, "min_token_size=3": 1,
                   "max_token_size=9": 1}


def test_split_counts_fractions_and_seed():
    kept = np.arange(100)
    train, test = R.split_test(kept, 0.1, True, 42)
    assert len(test) == 10 and len(train) == 90 and not set(train) & set(test)
    assert np.array_equal(R.split_test(kept, 0.1, True, 42)[1], test)  # seeded
    assert not np.array_equal(R.split_test(kept, 0.1, True, 7)[1], test)
    train, test = R.split_test(kept, 3, False, 0)
    assert test.tolist() == [97, 98, 99]
    assert len(R.split_test(kept, 0.001, True, 0)[1]) == 1  # a fraction holds out at least one
    assert len(R.split_test(kept, 0, True, 0)[1]) == 0
    with pytest.raises(DataError, match="data.rows.test_split"):
        R.split_test(np.arange(3), 3, True, 0)


def test_slice_bounds():
    assert R.slice_bounds(-1, -1, 10) == (0, 10)
    assert R.slice_bounds(2, 3, 10) == (2, 5)
    assert R.slice_bounds(0.5, -1, 10) == (5, 10)
    assert R.slice_bounds(0.2, 0.5, 10) == (2, 7)
    assert R.slice_bounds(8, 5, 10) == (8, 10)
