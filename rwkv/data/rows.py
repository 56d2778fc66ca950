"""From tokenized documents to stored rows: filtering, test split, packing, rechunking, sorting,
and the Arrow writers (docs/data.md "Rows").

Documents live in one memory-mapped Arrow table (`input_ids`, `loss_mask` list columns). A set of
rows is described by `order` (document indices in row order) and `bounds` (row r = documents
order[bounds[r]:bounds[r+1]]), so packing, sorting and writing are numpy work plus Arrow `take`;
nothing holds the whole corpus in Python lists.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .formats import learned_targets

# Rows are written in Arrow record batches of about this many tokens (bounded memory).
BATCH_TOKENS = 1 << 22


def cumsum0(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def list_array(offsets: np.ndarray, values: np.ndarray, value_type) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def schema(with_docs: bool) -> pa.Schema:
    fields = [pa.field("input_ids", pa.list_(pa.int32())), pa.field("loss_mask", pa.list_(pa.int8()))]
    if with_docs:
        fields.append(pa.field("doc_offsets", pa.list_(pa.int32())))
    return pa.schema(fields)


class TokenTable:
    """Tokenized documents (one per source record, end-of-document token included)."""

    def __init__(self, table: pa.Table):
        self.table = table

    def take(self, docs: np.ndarray):
        docs = np.asarray(docs, dtype=np.int64)
        if len(docs) and docs[-1] - docs[0] + 1 == len(docs) and np.all(np.diff(docs) == 1):
            t = self.table.slice(int(docs[0]), len(docs))  # a run of documents: no gather needed
        else:
            t = self.table.take(pa.array(docs))
        ids = t.column("input_ids").combine_chunks()
        mask = t.column("loss_mask").combine_chunks()
        return (ids.flatten().to_numpy(), mask.flatten().to_numpy(),
                ids.value_lengths().to_numpy().astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Selection

def count_of(value, n: int) -> int:
    """infctx convention: a float < 1 is a fraction of n, anything else a count."""
    if isinstance(value, float) and value < 1:
        return int(n * value)
    return int(value)


def slice_bounds(offset, length, n: int) -> tuple[int, int]:
    start = 0 if offset is None or offset < 0 else min(n, count_of(offset, n))
    if length is None or length < 0:
        return start, n
    return start, min(n, start + count_of(length, n))


def keep_mask(lengths: np.ndarray, learned: np.ndarray, min_size: int, max_size: int):
    """Documents to keep and why the others go. Rows with < 2 tokens or no learned target are always
    dropped (nothing to predict), then the min/max_token_size filters."""
    reasons = {}
    keep = lengths >= 2
    reasons["shorter than 2 tokens"] = int((~keep).sum())
    no_target = keep & (learned <= 0)
    reasons["no learned token"] = int(no_target.sum())
    keep &= ~no_target
    if min_size > 0:
        short = keep & (lengths < min_size)
        reasons[f"min_token_size={min_size}"] = int(short.sum())
        keep &= ~short
    if max_size > 0:
        long_ = keep & (lengths > max_size)
        reasons[f"max_token_size={max_size}"] = int(long_.sum())
        keep &= ~long_
    return keep, {k: v for k, v in reasons.items() if v}


def split_test(kept: np.ndarray, test_split, shuffle: bool, seed: int):
    """(train docs, test docs), both in dataset order. Fraction -> at least 1 document (infctx)."""
    n = len(kept)
    if test_split == 0:
        return kept, kept[:0]
    k = max(1, round(n * test_split)) if test_split < 1 else int(test_split)
    if k >= n:
        raise DataError(f"data.rows.test_split: holding out {k} of the {n} documents left after filtering leaves "
                        "nothing to train on; lower data.rows.test_split (0 disables the test split)")
    if shuffle:
        perm = np.random.default_rng(seed).permutation(n)
        return np.sort(kept[perm[k:]]), np.sort(kept[perm[:k]])
    return kept[:-k], kept[-k:]


# ---------------------------------------------------------------------------------------------
# Row layouts: (order, bounds)

def one_per_row(docs: np.ndarray):
    return docs, np.arange(len(docs) + 1, dtype=np.int64)


def pack_best_fit(docs: np.ndarray, lengths: np.ndarray, max_len: int):
    """Best-fit decreasing: longest document first, into the fullest row it still fits. Rows with
    the same free space sit in one stack, and only the distinct free sizes (< max_len) are kept
    sorted, so a step costs O(log max_len) whatever the corpus size."""
    lens = lengths[docs]
    rows: list[list[int]] = []
    stacks: dict[int, list[int]] = {}
    free_sizes: list[int] = []
    for pos in np.argsort(-lens, kind="stable"):
        n = int(lens[pos])
        k = bisect_left(free_sizes, n) if n < max_len else len(free_sizes)
        if k < len(free_sizes):
            free = free_sizes[k]
            row = stacks[free].pop()
            if not stacks[free]:
                free_sizes.pop(k)
            rows[row].append(int(docs[pos]))
            free -= n
        else:
            row = len(rows)
            rows.append([int(docs[pos])])
            free = max_len - n
        if free > 0:
            if not stacks.get(free):
                stacks[free] = []
                insort(free_sizes, free)
            stacks[free].append(row)
    order = np.fromiter((d for r in rows for d in r), dtype=np.int64, count=len(docs))
    return order, cumsum0(np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)))


def pack_in_sequence(docs: np.ndarray, lengths: np.ndarray, max_len: int):
    """Next fit in dataset order: start a new row whenever the next document does not fit."""
    bounds, used = [0], 0
    for i, n in enumerate(lengths[docs].tolist()):
        if used and used + n > max_len:
            bounds.append(i)
            used = 0
        used += n
    if len(docs):
        bounds.append(len(docs))
    return docs, np.asarray(bounds, dtype=np.int64)


def sort_rows(order: np.ndarray, bounds: np.ndarray, lengths: np.ndarray, ascending: bool):
    sizes = np.diff(bounds)
    row_len = np.add.reduceat(lengths[order], bounds[:-1]) if len(sizes) else np.zeros(0, np.int64)
    perm = np.argsort(row_len if ascending else -row_len, kind="stable")
    new_sizes = sizes[perm]
    new_bounds = cumsum0(new_sizes)
    idx = np.repeat(bounds[:-1][perm] - new_bounds[:-1], new_sizes) + np.arange(new_bounds[-1])
    return order[idx], new_bounds


# ---------------------------------------------------------------------------------------------
# Writers

class RowWriter:
    """Arrow IPC stream of rows + the counts that go into the manifest."""

    def __init__(self, path: str, with_docs: bool):
        self.schema = schema(with_docs)
        self.with_docs = with_docs
        self._w = pa.ipc.new_stream(path, self.schema)
        self.stats = {"rows": 0, "tokens": 0, "learned_tokens": 0, "documents": 0}

    def write(self, vals, masks, row_off, doc_off=None, doc_list_off=None, documents=0):
        n = len(row_off) - 1
        if n == 0:
            return
        cols = [list_array(row_off, vals.astype(np.int32, copy=False), pa.int32()),
                list_array(row_off, masks.astype(np.int8, copy=False), pa.int8())]
        if self.with_docs:
            cols.append(list_array(doc_list_off, doc_off.astype(np.int32), pa.int32()))
        self._w.write_batch(pa.RecordBatch.from_arrays(cols, schema=self.schema))
        first = masks[row_off[:-1]].astype(np.int64)
        self.stats["rows"] += n
        self.stats["tokens"] += int(row_off[-1])
        self.stats["learned_tokens"] += int(masks.sum(dtype=np.int64) - first.sum())
        self.stats["documents"] += int(documents)

    def close(self) -> dict:
        if self.stats["rows"] == 0:  # one empty batch: datasets cannot load a chunk-less table back
            self._w.write_batch(pa.RecordBatch.from_pylist([], schema=self.schema))
        self._w.close()
        return self.stats


def write_rows(table: TokenTable, order, bounds, lengths, writer: RowWriter) -> dict:
    """Rows made of whole documents (one per row, or packed)."""
    nrows = len(bounds) - 1
    row_tokens = cumsum0(np.add.reduceat(lengths[order], bounds[:-1])) if nrows else np.zeros(1, np.int64)
    r0 = 0
    while r0 < nrows:
        # Enough rows for ~BATCH_TOKENS tokens, at least one.
        r1 = max(r0 + 1, int(np.searchsorted(row_tokens, row_tokens[r0] + BATCH_TOKENS, side="right")) - 1)
        r1 = min(r1, nrows)
        b = bounds[r0 : r1 + 1]
        vals, masks, lens = table.take(order[b[0] : b[-1]])
        doc_start = cumsum0(lens)  # token offset of every document in this batch
        row_off = doc_start[b - b[0]]
        doc_off = doc_start[:-1] - np.repeat(row_off[:-1], np.diff(b))
        writer.write(vals, masks, row_off, doc_off, b - b[0], documents=b[-1] - b[0])
        r0 = r1
    return writer.stats


def write_rechunked(table: TokenTable, docs: np.ndarray, lengths: np.ndarray, size: int,
                    writer: RowWriter) -> dict:
    """Concatenate documents in order and cut rows of exactly `size` tokens; the remainder becomes
    a shorter last row (infctx drops it; we keep the data). doc_offsets records every document start
    inside a row, always beginning with 0 (a row may start mid-document)."""
    carry_v, carry_m, carry_s = np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int64)
    doc_tokens = cumsum0(lengths[docs])
    n, d0 = len(docs), 0
    while True:
        d1 = d0
        if d0 < n:
            d1 = int(np.searchsorted(doc_tokens, doc_tokens[d0] + BATCH_TOKENS, side="right")) - 1
            d1 = min(max(d1, d0 + 1), n)
            vals, masks, lens = table.take(docs[d0:d1])
            v, m = np.concatenate([carry_v, vals]), np.concatenate([carry_m, masks])
            s = np.concatenate([carry_s, len(carry_v) + cumsum0(lens)[:-1]])
        else:
            v, m, s = carry_v, carry_m, carry_s
        last = d1 >= n
        cut = len(v) if last else len(v) // size * size
        nrows = -(-cut // size)
        row_off = np.minimum(np.arange(nrows + 1, dtype=np.int64) * size, cut)
        inside = s[s < cut]
        r, o = inside // size, inside % size
        all_r = np.concatenate([np.arange(nrows), r[o > 0]])
        all_o = np.concatenate([np.zeros(nrows, np.int64), o[o > 0]])
        order = np.lexsort((all_o, all_r))
        doc_list_off = cumsum0(np.bincount(all_r, minlength=nrows)) if nrows else np.zeros(1, np.int64)
        _emit(writer, v[:cut], m[:cut], row_off, all_o[order], doc_list_off, len(inside))
        if last:
            return writer.stats
        carry_v, carry_m, carry_s = v[cut:], m[cut:], s[s >= cut] - cut
        d0 = d1


def _emit(writer, v, m, row_off, doc_o, doc_list_off, documents):
    """Write rechunked rows, dropping any row with nothing to learn (e.g. only masked prompts)."""
    keep = (np.diff(row_off) >= 2) & (learned_targets(m, row_off) > 0)
    if not keep.all():
        v, m = v[np.repeat(keep, np.diff(row_off))], m[np.repeat(keep, np.diff(row_off))]
        doc_o = doc_o[np.repeat(keep, np.diff(doc_list_off))]
        row_off, doc_list_off = cumsum0(np.diff(row_off)[keep]), cumsum0(np.diff(doc_list_off)[keep])
    writer.write(v, m, row_off, doc_o, doc_list_off, documents=documents)
