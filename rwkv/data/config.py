"""The `data:` section schema: one typed `__init__` with one docstring line per key.

`DataConfig.__init__` IS the schema of the YAML `data:` section. `RWKVDataModule` inherits it
unchanged (it defines no `__init__` of its own), so LightningCLI, `preload_datapath.py` and the
tests validate against exactly the same signature, and `preload_datapath.py` never has to import
Lightning (a cache hit must stay well under 2 s, docs/benchmarks.md "Preload").

Key names follow RWKV-infctx where the concept exists (docs/design.md §4; docs/data.md lists the differences).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Literal

from ..errors import DataError

# Keys that only steer loading/sampling at fit time. Everything else determines the bytes on disk
# and is part of the preload cache key (docs/design.md §3.6).
LOADER_KEYS = frozenset(
    {
        "data_path", "num_proc", "micro_batch_size", "ctx_len", "auto_preload",
        "reset_state_per_document", "shuffle", "sampler", "sampler_seed", "magic_prime",
        "epoch_begin", "num_workers",
    }
)
BUILDER_NAMES = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "text": "text",
                 "arrow": "arrow"}


class DataConfig:
    """Data section of the config: source, tokenizer, format and masks, lengths, packing, loading."""

    def __init__(
        self,
        data_path: str,
        source: str | None = None,
        source_data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        source_data_dir: str | None = None,
        source_dataset_params: dict[str, Any] | None = None,
        source_dataset_split: str = "train",
        source_dataset_test_split: str | None = None,
        tokenizer: str = "world",
        eod_token_id: int | None = 0,
        custom_text_key: str | None = None,
        multi_column_keys: list[str] | None = None,
        multi_column_prefix: list[str] | None = None,
        multi_column_suffix: list[str] | None = None,
        multi_column_train_mask: list[bool] | None = None,
        multi_column_separator: str = "\n\n",
        disable_prompt_completion_mask: bool = False,
        conversation_format: Literal["iopairs", "sender", "messages"] | None = None,
        conversation_key: str | None = None,
        conversation_end_of_conversation: str | None = None,
        conversation_input_key_prefix_map: dict[str, str] | None = None,
        conversation_input_key_mask: dict[str, bool] | None = None,
        conversation_sender_key: str = "sender",
        conversation_sender_value_map: dict[str, str] | None = None,
        conversation_input_key_map: dict[str, str] | None = None,
        conversation_sender_mask: dict[str, bool] | None = None,
        conversation_sender_suffix: dict[str, str] | None = None,
        conversation_role_map: dict[str, str] | None = None,
        conversation_role_mask: dict[str, bool] | None = None,
        min_token_size: int = -1,
        max_token_size: int = -1,
        text_rechunk_size: int = 4096,
        text_rechunk_auto: bool = True,
        text_rechunk_force: bool = False,
        packing_enable: bool = False,
        packing_max_len: int = 4096,
        packing_in_sequence: bool = False,
        sort_by_length: bool = False,
        sort_asc: bool = True,
        test_split: int | float = 0.01,
        test_split_shuffle: bool = True,
        dataset_offset: int | float = -1,
        dataset_length: int | float = -1,
        seed: int = 42,
        num_proc: int | None = None,
        micro_batch_size: int = 1,
        ctx_len: int = 4096,
        auto_preload: bool = False,
        reset_state_per_document: bool = True,
        shuffle: bool = True,
        sampler: Literal["default", "official"] = "default",
        sampler_seed: int | None = None,
        magic_prime: int | None = None,
        epoch_begin: int = 0,
        num_workers: int = 0,
    ):
        """
        Args:
            data_path: Directory of the tokenized DatasetDict (train, test) that preload writes.
            source: Hub id or local dataset folder; json/jsonl, csv, parquet, text; binidx; null = data_path.
            source_data_files: Data files (path, glob, list or {split: files}); binidx: the .bin/.idx prefix.
            source_data_dir: data_dir for load_dataset (relative source_data_files resolve against it).
            source_dataset_params: Extra keyword arguments for datasets.load_dataset (name, revision...).
            source_dataset_split: Source split used as train.
            source_dataset_test_split: Source split used as test instead of holding out test_split.
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
            min_token_size: Drop documents with fewer tokens, end-of-document included (-1 = off).
            max_token_size: Drop documents with more tokens than this (-1 = off).
            text_rechunk_size: Row length when rechunking (all documents concatenated, then cut).
            text_rechunk_auto: Rechunk automatically when source is text.
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
            micro_batch_size: Rows per batch per rank (linked from trainer.microbatch_size).
            ctx_len: Segment length (linked from model.segments.ctx_len); the official sampler's window.
            auto_preload: At fit start, build a missing or stale data_path instead of stopping.
            reset_state_per_document: For packed rows, reset the recurrent state at each document.
            shuffle: Shuffle train rows each epoch (seeded by sampler_seed and the epoch).
            sampler: default (rows of data_path) or official (RWKV-LM magic_prime sampler, binidx).
            sampler_seed: Seed of the train shuffle (null = seed).
            magic_prime: official sampler: the prime p (null = from the data size and ctx_len).
            epoch_begin: official sampler: mini-epoch to start from (sample counter offset).
            num_workers: DataLoader worker processes.
        """
        params = inspect.signature(DataConfig.__init__).parameters
        values = locals()
        for name in params:
            if name != "self":
                setattr(self, name, values[name])
        self.validate()
        super().__init__()

    # ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [k for k in inspect.signature(DataConfig.__init__).parameters if k != "self"]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()}

    def cache_config(self) -> dict[str, Any]:
        """The keys that determine the preload output (everything except LOADER_KEYS). For local
        builders (json, text, …, binidx) the files are identified by the source fingerprint (resolved
        path, size, mtime), so how their paths are spelled (relative, absolute) does not matter."""
        skip = set(LOADER_KEYS)
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
            raise DataError(f"data.{key}: {msg}")

        if not self.data_path or not str(self.data_path).strip():
            bad("data_path", "must name the directory of the preloaded dataset")
        if self.source == "binidx" and not isinstance(self.source_data_files, str):
            bad("source_data_files", "source binidx needs the .bin/.idx path prefix as one string")
        if self.sampler == "official" and self.source != "binidx":
            bad("sampler", "`official` reads a binidx source directly; set data.source: binidx")
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
