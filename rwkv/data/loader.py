"""Map-style datasets over the preloaded rows and the batch collate (no Lightning here).

Batch contract (docs/data.md "Batches"): `input_ids` LongTensor [B, L] right-padded with 0 to the
longest row of the batch; `loss_mask` FloatTensor [B, L] (0 on padding); `lengths` LongTensor [B];
and, only for packed rows with reset_state_per_document, `reset` BoolTensor [B, L], True at every
document start t > 0. At those positions loss_mask is also set to 0: a document's first token is
not predictable from its own document.
"""

from __future__ import annotations

import numpy as np
import torch


class TokenRows(torch.utils.data.Dataset):
    """Rows of a memory-mapped `datasets.Dataset` read straight from its Arrow buffers.

    Row access through `datasets` formatting costs ~50 µs; slicing zero-copy numpy views of the
    Arrow list arrays costs ~2 µs. Views are rebuilt lazily after unpickling (workers).
    """

    def __init__(self, dataset):
        if getattr(dataset, "_indices", None) is not None:
            dataset = dataset.flatten_indices()
        self.dataset = dataset
        self.columns = [c for c in ("input_ids", "loss_mask", "doc_offsets") if c in dataset.column_names]
        self.has_docs = "doc_offsets" in self.columns
        self._views = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_views"] = None
        return state

    def _build(self):
        starts, views = [0], []
        for batch in self.dataset.data.table.to_batches():
            cols = {}
            for name in self.columns:
                arr = batch.column(name)
                cols[name] = (arr.offsets.to_numpy(), arr.values.to_numpy())
            views.append(cols)
            starts.append(starts[-1] + batch.num_rows)
        self._views = (np.asarray(starts), views)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if self._views is None:
            self._build()
        starts, views = self._views
        i = int(i)
        if i < 0:
            i += len(self)
        c = int(np.searchsorted(starts, i, side="right")) - 1
        j = i - starts[c]
        out = {"index": i}
        for name, (off, val) in views[c].items():
            out[name] = val[off[j] : off[j + 1]]
        return out

    def lengths(self) -> np.ndarray:
        if self._views is None:
            self._build()
        return np.concatenate([np.diff(v["input_ids"][0]) for v in self._views[1]] or [np.zeros(0, int)])


class BinidxWindows(torch.utils.data.Dataset):
    """Official-sampler windows: index = token offset, item = ctx_len + 1 tokens (x and the shifted
    y of docs/model-spec.md §6.2), all learned."""

    def __init__(self, reader, ctx_len: int):
        self.reader, self.ctx_len = reader, int(ctx_len)

    def __len__(self) -> int:
        return self.reader.num_tokens // self.ctx_len

    def __getitem__(self, offset: int) -> dict[str, np.ndarray]:
        ids = np.asarray(self.reader.tokens()[offset : offset + self.ctx_len + 1], dtype=np.int64)
        return {"input_ids": ids, "loss_mask": np.ones(len(ids), dtype=np.int8), "index": offset}


class Collate:
    """Picklable collate: pads, builds masks, and marks document starts of packed rows."""

    def __init__(self, reset_per_document: bool = True):
        self.reset_per_document = bool(reset_per_document)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        B = len(rows)
        lengths = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.long)
        L = int(lengths.max()) if B else 0
        input_ids = torch.zeros(B, L, dtype=torch.long)
        loss_mask = torch.zeros(B, L, dtype=torch.float32)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[b, :n] = torch.from_numpy(np.asarray(r["input_ids"], dtype=np.int64))
            loss_mask[b, :n] = torch.from_numpy(np.asarray(r["loss_mask"], dtype=np.float32))
        batch = {"input_ids": input_ids, "loss_mask": loss_mask, "lengths": lengths}
        if B and "index" in rows[0]:  # dataset rows (or binidx offsets): named in error messages
            batch["index"] = torch.tensor([int(r["index"]) for r in rows], dtype=torch.long)
        if self.reset_per_document and B and "doc_offsets" in rows[0]:
            reset = torch.zeros(B, L, dtype=torch.bool)
            for b, r in enumerate(rows):
                starts = np.asarray(r["doc_offsets"], dtype=np.int64)
                starts = starts[(starts > 0) & (starts < len(r["input_ids"]))]
                if len(starts):
                    idx = torch.from_numpy(starts)
                    reset[b, idx] = True
                    loss_mask[b, idx] = 0.0
            batch["reset"] = reset
        return batch
