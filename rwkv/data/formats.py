"""Record formats -> token ids + loss masks (docs/data.md "Formats and masks").

Every format turns a record into a list of (text, learn) segments; segments are tokenized one by
one (so a mask boundary is also a token boundary, as in infctx) and the end-of-document token is
appended. `loss_mask[t] = 1` means token t is learned as a prediction target.

The format is chosen once per dataset from its columns, in RWKV-infctx-trainer's order:
custom_text_key, conversation_format (or a `messages` column), multi-column, prompt/completion, text.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

from ..errors import DataError
from .config import key_path

ALPACA_KEYS = ["instruction", "input", "output"]
ALPACA_PREFIX = ["Instruction:\n", "Input:\n", "Output:\n"]
ALPACA_MASK = [True, False, True]
DEFAULT_ROLE_MAP = {"system": "System", "user": "User", "assistant": "Assistant"}
DEFAULT_ROLE_MASK = {"system": False, "user": False, "assistant": True}
DEFAULT_IOPAIRS_PREFIX = {"input": "User: ", "output": "Assistant: "}
DEFAULT_IOPAIRS_MASK = {"input": False}
DEFAULT_SENDER_TEMPLATE = {"message": "{sender}: "}
TURN_SUFFIX = "\n\n"


class RowError(DataError):
    """A bad record; the pipeline adds the source file and line before showing it."""

    def __init__(self, row: int, column: str | None, message: str):
        self.row, self.column, self.detail = row, column, message
        where = f"record {row}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # survive the trip back from a worker process
        return (RowError, (self.row, self.column, self.detail))


def _text(value, row: int, column: str, *, optional: bool = True) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RowError(row, column, f"expected a string, got {type(value).__name__} ({str(value)[:60]!r}); "
                       "fix the record or choose another column with data.format.custom_text_key")
    return value


class RecordFormatter:
    """Picklable: holds only plain config values and a lazily-built tokenizer (worker processes get it pickled)."""

    def __init__(self, cfg, tokenizer, columns: list[str]):
        self.tokenizer = tokenizer
        self.eod = cfg.eod_token_id
        keys = [k for k in cfg.keys() if k.startswith(("conversation_", "multi_column_"))]
        self.cfg = {k: getattr(cfg, k) for k in keys}
        self.cfg["disable_prompt_completion_mask"] = cfg.disable_prompt_completion_mask
        self.kind, self.columns = self._detect(cfg, list(columns))

    # -- format selection, once per dataset --------------------------------------------------
    def _detect(self, cfg, cols: list[str]) -> tuple[str, list[str]]:
        def need(col: str, key: str) -> None:
            if col not in cols:
                raise DataError(f"{key_path(key)}: column {col!r} is not in the dataset (columns: {cols})")

        if cfg.custom_text_key:
            need(cfg.custom_text_key, "custom_text_key")
            return "text", [cfg.custom_text_key]
        fmt = cfg.conversation_format or ("messages" if "messages" in cols and "text" not in cols else None)
        if fmt:
            key = cfg.conversation_key or ("messages" if fmt == "messages" else "conversation")
            need(key, "conversation_key")
            self.conv_key = key
            return fmt, [key]
        keys = cfg.multi_column_keys
        if keys is None:
            keys = ALPACA_KEYS if sum(k in cols for k in ALPACA_KEYS) >= 2 else []
        if keys:
            present = [k for k in keys if k in cols]
            if not present:
                raise DataError(f"data.format.multi_column_keys: none of {keys} is a column (columns: {cols})")
            n = len(keys)
            self.mc_keys = keys
            self.mc_prefix = cfg.multi_column_prefix or (ALPACA_PREFIX if keys == ALPACA_KEYS else [""] * n)
            self.mc_suffix = cfg.multi_column_suffix or [""] * n
            self.mc_mask = cfg.multi_column_train_mask or (ALPACA_MASK if keys == ALPACA_KEYS else [True] * n)
            return "multi_column", present
        if "prompt" in cols and "completion" in cols:
            return "prompt_completion", ["prompt", "completion"]
        if "text" in cols:
            return "text", ["text"]
        raise DataError(
            f"no text column: the dataset has columns {cols}. Set data.format.custom_text_key to the column "
            "holding the text, or use a record format (prompt/completion, data.format.multi_column_keys, "
            "data.format.conversation_format)"
        )

    # -- per-record segments -----------------------------------------------------------------
    def segments(self, rec: dict, row: int) -> list[tuple[str, bool]]:
        return getattr(self, "_seg_" + self.kind)(rec, row)

    def _seg_text(self, rec, row):
        col = self.columns[0]
        return [(_text(rec.get(col), row, col), True)]

    def _seg_prompt_completion(self, rec, row):
        prompt = _text(rec.get("prompt"), row, "prompt")
        return [(prompt, self.cfg["disable_prompt_completion_mask"]),
                (_text(rec.get("completion"), row, "completion"), True)]

    def _seg_multi_column(self, rec, row):
        parts = []
        for key, pre, suf, learn in zip(self.mc_keys, self.mc_prefix, self.mc_suffix, self.mc_mask):
            value = _text(rec.get(key), row, key)
            if value:
                parts.append((pre + value + suf, bool(learn)))
        # infctx: merge only when at least two listed columns are non-empty; else nothing to learn.
        if len(parts) < 2:
            return parts if len(self.mc_keys) == 1 else []
        out = [parts[0]]
        for text, learn in parts[1:]:
            out.append((self.cfg["multi_column_separator"], learn))
            out.append((text, learn))
        return out

    def _turns(self, rec, row) -> list:
        turns = rec.get(self.conv_key)
        if turns is None:
            return []
        if not isinstance(turns, list):
            raise RowError(row, self.conv_key, f"expected a list of turns, got {type(turns).__name__}")
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RowError(row, self.conv_key, f"turn {i} is a {type(turn).__name__}, expected an object")
        return turns

    def _end(self, parts):
        eoc = self.cfg["conversation_end_of_conversation"]
        if eoc and parts:
            parts.append((eoc, True))
        return parts

    def _seg_iopairs(self, rec, row):
        prefix = self.cfg["conversation_input_key_prefix_map"] or DEFAULT_IOPAIRS_PREFIX
        masks = self.cfg["conversation_input_key_mask"]
        masks = DEFAULT_IOPAIRS_MASK if masks is None else masks
        suffix = self.cfg["conversation_sender_suffix"] or {}
        parts = []
        for turn in self._turns(rec, row):
            for key, pre in prefix.items():
                if key in turn and turn[key] is not None:
                    value = _text(turn[key], row, f"{self.conv_key}[].{key}")
                    parts.append((pre + value + suffix.get(key, TURN_SUFFIX), bool(masks.get(key, True))))
        return self._end(parts)

    def _seg_sender(self, rec, row):
        skey = self.cfg["conversation_sender_key"]
        labels = self.cfg["conversation_sender_value_map"] or {}
        templates = self.cfg["conversation_input_key_map"] or DEFAULT_SENDER_TEMPLATE
        masks = self.cfg["conversation_sender_mask"] or {}
        suffix = self.cfg["conversation_sender_suffix"] or {}
        parts = []
        for i, turn in enumerate(self._turns(rec, row)):
            if skey not in turn:
                raise RowError(row, self.conv_key, f"turn {i} has no {skey!r} field "
                               "(data.format.conversation_sender_key)")
            sender = str(turn[skey])
            label = labels.get(sender, sender)
            for field, template in templates.items():
                if field in turn and turn[field] is not None:
                    value = _text(turn[field], row, f"{self.conv_key}[].{field}")
                    parts.append((template.format(sender=label) + value + suffix.get(sender, TURN_SUFFIX),
                                  bool(masks.get(sender, True))))
        return self._end(parts)

    def _seg_messages(self, rec, row):
        # Default RWKV chat template "User: …\n\nAssistant: …\n\n". The "Label:" part is always
        # masked (it is the prompt at inference time); " content\n\n" follows the role's mask, so the
        # model learns to answer after "Assistant:" and to end its turn with "\n\n".
        labels = {**DEFAULT_ROLE_MAP, **(self.cfg["conversation_role_map"] or {})}
        masks = {**DEFAULT_ROLE_MASK, **(self.cfg["conversation_role_mask"] or {})}
        parts = []
        for i, msg in enumerate(self._turns(rec, row)):
            role = msg.get("role")
            if role not in labels:
                raise RowError(row, self.conv_key, f"message {i} has role {role!r}, which "
                               "data.format.conversation_role_map does not name; add it (e.g. {tool: Tool})")
            content = _text(msg.get("content"), row, f"{self.conv_key}[{i}].content")
            parts.append((labels[role] + ":", False))
            parts.append((" " + content + TURN_SUFFIX, bool(masks.get(role, False))))
        return self._end(parts)

    # -- batch tokenization ------------------------------------------------------------------
    def __call__(self, batch: dict[str, list], first_row: int):
        """Tokenize a batch of records (column -> values). Returns flat int32 ids, int8 masks,
        int64 offsets [n+1] and per-record learned-target counts (positions >= 1)."""
        n = len(next(iter(batch.values()))) if batch else 0
        texts, seg_mask, seg_rec = [], [], []
        for i in range(n):
            rec = {c: batch[c][i] for c in batch}
            for text, learn in self.segments(rec, first_row + i):
                if text:
                    texts.append(text)
                    seg_mask.append(learn)
                    seg_rec.append(i)
        try:
            ids = self.tokenizer.encode_batch(texts)
        except UnicodeError:
            for i, t in enumerate(texts):  # find the record with the lone surrogate
                try:
                    t.encode("utf-8")
                except UnicodeError as e:
                    raise RowError(first_row + seg_rec[i], None, f"text is not valid Unicode ({e})") from None
            raise
        # Interleave the end-of-document token as one more segment per record; everything below is
        # per-segment numpy work, never a pass over all tokens in Python or a per-token cumsum.
        # The end-of-document token is learned unless the record's last non-empty segment is masked
        # (e.g. a conversation that ends with a user turn).
        if self.eod is not None:
            eod, seqs, masks, recs, j = [self.eod], [], [], [], 0
            for i in range(n):
                last = False
                while j < len(seg_rec) and seg_rec[j] == i:
                    seqs.append(ids[j])
                    masks.append(seg_mask[j])
                    recs.append(i)
                    if ids[j]:
                        last = seg_mask[j]
                    j += 1
                seqs.append(eod)
                masks.append(last)
                recs.append(i)
        else:
            seqs, masks, recs = ids, seg_mask, seg_rec
        seg_len = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        seg_m = np.asarray(masks, dtype=np.int8)
        rec = np.asarray(recs, dtype=np.int64)
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(seg_len.sum()))
        mask = np.repeat(seg_m, seg_len)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rec, weights=seg_len, minlength=n).astype(np.int64), out=offsets[1:])
        # Learned targets = learned tokens minus position 0 (the first token of the first non-empty
        # segment), all from per-segment sums.
        learned = np.bincount(rec, weights=seg_len * seg_m, minlength=n).astype(np.int64)
        nz = np.nonzero(seg_len)[0]
        if len(nz):
            r = rec[nz]
            first = np.r_[True, r[1:] != r[:-1]]
            learned[r[first]] -= seg_m[nz[first]]
        return flat, mask, offsets, learned


def learned_targets(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-row count of mask==1 at positions >= 1 (position 0 is never a prediction target)."""
    cs = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=cs[1:])
    starts, ends = offsets[:-1], offsets[1:]
    total = cs[ends] - cs[starts]
    first = np.where(ends > starts, mask[np.minimum(starts, max(len(mask) - 1, 0))] if len(mask) else 0, 0)
    return total - first
