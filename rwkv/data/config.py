"""The `data:` section schema: a few top-level keys and four typed groups (docs/design.md §4, docs/data.md).

`DataConfig.__init__` IS the schema of the YAML `data:` section. `RWKVDataModule` inherits it
unchanged (it defines no `__init__` of its own), so LightningCLI, `preload_datapath.py` and the
tests validate against exactly the same signature, and `preload_datapath.py` never has to import
Lightning (a cache hit must stay well under 2 s, docs/benchmarks.md "Preload").

Top level: `data_path` and the two keys linked from other sections (`micro_batch_size` from
`trainer.microbatch_size`, `ctx_len` from `model.segments.ctx_len`; rwkv/cli.py). The rest sits in
groups, by what it decides: `origin` (where the records come from), `format` (how a record becomes tokens
and a loss mask), `rows` (how documents become rows of data_path) and `loader` (how fit reads those rows).
A key keeps its name inside its group, and names are unique across groups, so the data code reads every key
by name (`cfg.tokenizer`), and a key's old flat place `data.KEY` still works, with one warning naming the
new one (`MOVED`, rwkv/moved_keys.py).

Key names follow RWKV-infctx where the concept exists (docs/design.md §4; docs/data.md lists the differences).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..errors import DataError
from ..moved_keys import regroup

BUILDER_NAMES = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "text": "text",
                 "arrow": "arrow"}


@dataclass(frozen=True)
class OriginConfig:
    """`data.origin`: where the records come from. Named origin, not source, because `source` is itself one of
    its keys (kept under its name, so that `data.origin.source` moves by position only); not dataset, which in this
    package means the tokenized rows at data_path.

    Args:
        source: Hub id or local dataset folder; json/jsonl, csv, parquet, text; binidx; null = data_path.
        source_data_files: Data files (path, glob, list or {split: files}); binidx: the .bin/.idx prefix.
        source_data_dir: data_dir for load_dataset (relative source_data_files resolve against it).
        source_dataset_params: Extra keyword arguments for datasets.load_dataset (name, revision...).
        source_dataset_split: Source split used as train.
        source_dataset_test_split: Source split used as test instead of holding out rows.test_split.
    """

    source: str | None = None
    source_data_files: str | list[str] | dict[str, str | list[str]] | None = None
    source_data_dir: str | None = None
    source_dataset_params: dict[str, Any] | None = None
    source_dataset_split: str = "train"
    source_dataset_test_split: str | None = None


@dataclass(frozen=True)
class FormatConfig:
    """`data.format`: how a record becomes tokens and a loss mask (docs/data.md "Formats and masks").

    Args:
        tokenizer: world, neox, bytes, a tokenizer.json path, or a local HF tokenizer directory.
        eod_token_id: End-of-document token appended after every document (null = none).
        custom_text_key: Column tokenized as plain text; takes priority over every other format.
        multi_column_keys: Columns merged into one document (null = instruction/input/output; [] = off).
        multi_column_prefix: Per-column prefix (default Instruction:, Input:, Output: + newline).
        multi_column_suffix: Per-column suffix (default empty).
        multi_column_train_mask: Per-column learn flag (default [true, false, true]: input masked).
        multi_column_separator: Text between merged columns; learned iff the column after it is.
        disable_prompt_completion_mask: Also learn the prompt of prompt/completion records.
        conversation_format: iopairs or sender (infctx formats), or messages ([{role, content}]).
        conversation_key: Column holding the turns (default messages, or conversation).
        conversation_end_of_conversation: Text appended (learned) after the last turn.
        conversation_input_key_prefix_map: iopairs: prefix per turn key (default User: / Assistant:).
        conversation_input_key_mask: iopairs: learn flag per turn key; unlisted keys are learned.
        conversation_sender_key: sender: field naming the speaker of a turn.
        conversation_sender_value_map: sender: speaker value -> display label used as {sender}.
        conversation_input_key_map: sender: turn field -> template with {sender} (message: '{sender}: ').
        conversation_sender_mask: sender: learn flag per speaker; unlisted speakers are learned.
        conversation_sender_suffix: iopairs/sender: suffix per turn key or speaker (default blank line).
        conversation_role_map: messages: role -> label (default System, User, Assistant).
        conversation_role_mask: messages: learn flag per role (default only assistant is learned).
    """

    tokenizer: str = "world"
    eod_token_id: int | None = 0
    custom_text_key: str | None = None
    multi_column_keys: list[str] | None = None
    multi_column_prefix: list[str] | None = None
    multi_column_suffix: list[str] | None = None
    multi_column_train_mask: list[bool] | None = None
    multi_column_separator: str = "\n\n"
    disable_prompt_completion_mask: bool = False
    conversation_format: Literal["iopairs", "sender", "messages"] | None = None
    conversation_key: str | None = None
    conversation_end_of_conversation: str | None = None
    conversation_input_key_prefix_map: dict[str, str] | None = None
    conversation_input_key_mask: dict[str, bool] | None = None
    conversation_sender_key: str = "sender"
    conversation_sender_value_map: dict[str, str] | None = None
    conversation_input_key_map: dict[str, str] | None = None
    conversation_sender_mask: dict[str, bool] | None = None
    conversation_sender_suffix: dict[str, str] | None = None
    conversation_role_map: dict[str, str] | None = None
    conversation_role_mask: dict[str, bool] | None = None


@dataclass(frozen=True)
class RowsConfig:
    """`data.rows`: which documents are kept and how they become the rows of data_path (docs/data.md "Rows"):
    slice, filter, test split, then one of three layouts (rechunked, packed, one document per row), then sort.
    Rechunking is here, not in format: it is the layout that concatenates and cuts the tokenized documents.

    Args:
        min_token_size: Drop documents with fewer tokens, end-of-document included (-1 = off).
        max_token_size: Drop documents with more tokens than this (-1 = off).
        text_rechunk_size: Row length when rechunking (all documents concatenated, then cut).
        text_rechunk_auto: Rechunk automatically when origin.source is text.
        text_rechunk_force: Rechunk any source (packing is then off).
        packing_enable: Pack documents into rows of up to packing_max_len tokens, recording starts.
        packing_max_len: Longest packed row in tokens (ideally a multiple of model.segments.ctx_len).
        packing_in_sequence: Pack in dataset order (next fit) instead of best-fit-decreasing.
        sort_by_length: Sort train rows by length (then the train sampler does not shuffle).
        sort_asc: Ascending (true) or descending sort.
        test_split: Held-out documents: a fraction in [0, 1) or a count >= 1 (0 = none).
        test_split_shuffle: Pick the held-out documents at random (seeded), not the last ones.
        dataset_offset: Skip this many source records (float < 1 = fraction; -1 = off).
        dataset_length: Keep at most this many records after the offset (float < 1 = fraction).
        seed: Seed for the test split and anything else random in the preload.
        num_proc: Tokenizer worker processes (null = CPU count); does not change the output.
    """

    min_token_size: int = -1
    max_token_size: int = -1
    text_rechunk_size: int = 4096
    text_rechunk_auto: bool = True
    text_rechunk_force: bool = False
    packing_enable: bool = False
    packing_max_len: int = 4096
    packing_in_sequence: bool = False
    sort_by_length: bool = False
    sort_asc: bool = True
    test_split: int | float = 0.01
    test_split_shuffle: bool = True
    dataset_offset: int | float = -1
    dataset_length: int | float = -1
    seed: int = 42
    num_proc: int | None = None


@dataclass(frozen=True)
class LoaderConfig:
    """`data.loader`: how fit reads data_path (docs/data.md "DataModule and batches"). Nothing here changes the
    preloaded bytes, so none of it is part of the preload cache key (docs/design.md §3.6).

    Args:
        auto_preload: At fit start, build a missing or stale data_path instead of stopping.
        reset_state_per_document: For packed rows, reset the recurrent state at each document.
        shuffle: Shuffle train rows each epoch (seeded by sampler_seed and the epoch).
        sampler: default (rows of data_path) or official (RWKV-LM magic_prime sampler, binidx).
        sampler_seed: Seed of the train shuffle (null = rows.seed).
        magic_prime: official sampler: the prime p (null = from the data size and ctx_len).
        epoch_begin: official sampler: mini-epoch to start from (sample counter offset).
        num_workers: DataLoader worker processes.
    """

    auto_preload: bool = False
    reset_state_per_document: bool = True
    shuffle: bool = True
    sampler: Literal["default", "official"] = "default"
    sampler_seed: int | None = None
    magic_prime: int | None = None
    epoch_begin: int = 0
    num_workers: int = 0


GROUPS = {"origin": OriginConfig, "format": FormatConfig, "rows": RowsConfig, "loader": LoaderConfig}
#: old flat `data.KEY` → the group it lives in now
MOVED = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}
#: the keys directly under `data:`
TOP_KEYS = ("data_path", "micro_batch_size", "ctx_len")
#: keys that do not change the preloaded bytes: left out of the preload cache key (docs/design.md §3.6)
NOT_CACHED = frozenset({*TOP_KEYS, *(f.name for f in fields(LoaderConfig)), "num_proc"})


def _group(cls, name: str, value):
    """`value` (the dataclass, a dict from YAML / hparams, a jsonargparse Namespace, or None) as `cls`."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        value = {f.name: getattr(value, f.name) for f in fields(cls) if hasattr(value, f.name)}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        key = unknown[0]
        if key in MOVED:
            hint = f"it belongs in data.{MOVED[key]}.{key}"
        elif close := difflib.get_close_matches(key, known, n=1):
            hint = f"did you mean {close[0]}?"
        else:
            hint = f"docs/data.md lists the keys of data.{name}"
        raise DataError(f"data.{name}.{key}: unknown key ({hint})")
    return cls(**value)


def grouped(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every key that belongs to a group put into it, without a warning: for code that names
    single keys (tests, benchmarks: `DataConfig.from_keys(tokenizer="bytes", ...)`). Users' configs go
    through `regroup`, which warns."""
    out = {k: v for k, v in values.items() if k not in MOVED}
    for key, value in values.items():
        if key in MOVED:
            group = out.get(MOVED[key])
            if group is not None and not isinstance(group, dict):
                group = asdict(group)
            out[MOVED[key]] = {**(group or {}), key: value}
    return out


def key_path(key: str) -> str:
    """How messages name a data key: its full place in the config (`data.format.tokenizer`, `data.data_path`)."""
    return f"data.{MOVED[key]}.{key}" if key in MOVED else f"data.{key}"


def _read(group: str, key: str) -> property:
    return property(lambda self: getattr(getattr(self, group), key), doc=f"data.{group}.{key}")


class DataConfig:
    """Data section of the config: data_path, the linked sizes, and the origin/format/rows/loader groups."""

    def __init__(
        self,
        data_path: str,
        micro_batch_size: int = 1,
        ctx_len: int = 4096,
        origin: OriginConfig = OriginConfig(),  # noqa: B008 - frozen dataclass, never mutated
        format: FormatConfig = FormatConfig(),  # noqa: B008 - the group name shadows format() here only
        rows: RowsConfig = RowsConfig(),  # noqa: B008
        loader: LoaderConfig = LoaderConfig(),  # noqa: B008
        **flat,
    ):
        """
        Args:
            data_path: Directory of the tokenized DatasetDict (train, test) that preload writes.
            micro_batch_size: Rows per batch per rank. Linked from trainer.microbatch_size, the one place to
                set it in a fit config (the CLI rejects data.micro_batch_size there).
            ctx_len: Segment length (linked from model.segments.ctx_len); the official sampler's window.
            origin: Where the records come from: source, its files, splits (OriginConfig).
            format: How a record becomes tokens and a loss mask: tokenizer, columns, chat formats (FormatConfig).
            rows: Which documents are kept and how they become rows: filter, split, rechunk, pack (RowsConfig).
            loader: How fit reads the rows: sampler, shuffle, workers, auto_preload (LoaderConfig).
            flat: Keys of the groups in their old place (e.g. tokenizer=...): still accepted, with one warning
                each (rwkv/moved_keys.py).
        """
        unknown = sorted(set(flat) - set(MOVED))
        if unknown:
            raise TypeError(f"DataConfig got unexpected keyword arguments {unknown}")
        values = regroup("data", {"origin": origin, "format": format, "rows": rows, "loader": loader, **flat},
                         MOVED)
        self.data_path = data_path
        self.micro_batch_size = micro_batch_size
        self.ctx_len = ctx_len
        for name, cls in GROUPS.items():
            setattr(self, name, _group(cls, name, values[name]))
        self.validate()
        super().__init__()

    @classmethod
    def from_keys(cls, **keys) -> DataConfig:
        """Every key by its name, wherever its group is (`grouped`), without the moved-key warning."""
        return cls(**grouped(keys))

    # ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """Every key's name: the top-level ones, then each group's, in schema order."""
        return [*TOP_KEYS, *MOVED]

    def to_dict(self) -> dict[str, Any]:
        """Every key by name, flat (names are unique across groups)."""
        return {k: getattr(self, k) for k in self.keys()}

    def as_config(self) -> dict[str, Any]:
        """The `data:` section as a config states it: top-level keys, then one dict per group."""
        return {**{k: getattr(self, k) for k in TOP_KEYS}, **{g: asdict(getattr(self, g)) for g in GROUPS}}

    def cache_config(self) -> dict[str, Any]:
        """The keys that determine the preload output: origin, format and rows, without num_proc; flat, by name,
        as before the groups existed, so a data_path preloaded then is still recognised. For local builders
        (json, text, …, binidx) the files are identified by the source fingerprint (resolved path, size,
        mtime), so how their paths are spelled (relative, absolute) does not matter."""
        skip = set(NOT_CACHED)
        if self.builder() is not None or self.source == "binidx":
            skip |= {"source_data_files", "source_data_dir"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def resolved_num_proc(self) -> int:
        if self.num_proc:
            return self.num_proc
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    def builder(self) -> str | None:
        """The datasets builder for `source`, or None for a hub id / local folder / binidx."""
        return BUILDER_NAMES.get((self.source or "").lower())

    def rechunks(self) -> bool:
        """infctx rule: rechunk text sources automatically, any source when forced; then no packing."""
        if self.text_rechunk_size <= 0:
            return False
        return self.text_rechunk_force or (self.text_rechunk_auto and self.builder() == "text")

    def validate(self) -> None:
        def bad(key: str, msg: str):
            raise DataError(f"{key_path(key)}: {msg}")

        if not self.data_path or not str(self.data_path).strip():
            bad("data_path", "must name the directory of the preloaded dataset")
        if self.source == "binidx" and not isinstance(self.source_data_files, str):
            bad("source_data_files", "source binidx needs the .bin/.idx path prefix as one string")
        if self.sampler == "official" and self.source != "binidx":
            bad("sampler", "`official` reads a binidx source directly; set data.origin.source: binidx")
        if self.sampler not in ("default", "official"):
            bad("sampler", f"unknown sampler {self.sampler!r}; use default or official")
        if self.conversation_format not in (None, "iopairs", "sender", "messages"):
            bad("conversation_format", f"unknown format {self.conversation_format!r}; use iopairs, sender "
                "or messages")
        n = len(self.multi_column_keys or [])
        for key in ("multi_column_prefix", "multi_column_suffix", "multi_column_train_mask"):
            val = getattr(self, key)
            if self.multi_column_keys and val is not None and len(val) != n:
                bad(key, f"has {len(val)} entries but multi_column_keys has {n}; give one per column")
        for key in ("test_split", "dataset_offset", "dataset_length"):
            val = getattr(self, key)
            if isinstance(val, bool) or not isinstance(val, int | float):
                bad(key, f"must be a number, got {val!r}")
            if isinstance(val, float) and val >= 1 and not val.is_integer():
                bad(key, f"{val} is neither a fraction < 1 nor a whole count")
        if self.test_split < 0:
            bad("test_split", "must be >= 0 (0 = no test rows)")
        if self.max_token_size > 0 and self.min_token_size > self.max_token_size:
            bad("min_token_size", f"{self.min_token_size} exceeds max_token_size {self.max_token_size}")
        if self.rechunks() and self.text_rechunk_size < 2:
            bad("text_rechunk_size", "must be >= 2 tokens")
        if self.packing_enable and self.packing_max_len < 2:
            bad("packing_max_len", "must be >= 2 tokens")
        for key in ("micro_batch_size", "ctx_len"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if self.num_proc is not None and self.num_proc < 1:
            bad("num_proc", "must be >= 1 (or null for the CPU count)")
        if self.eod_token_id is not None and self.eod_token_id < 0:
            bad("eod_token_id", "must be a token id >= 0, or null for no end-of-document token")


for _key, _group_name in MOVED.items():  # read access by name: cfg.tokenizer is cfg.format.tokenizer
    setattr(DataConfig, _key, _read(_group_name, _key))
del _key, _group_name
