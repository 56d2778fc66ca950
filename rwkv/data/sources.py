"""Sources: resolve and fingerprint the input files, load them through `datasets.load_dataset`,
and turn load failures into one clear error naming the file and line (docs/design.md §5.10, docs/data.md "Errors").
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from ..errors import DataError
from .config import key_path

# Files of a local hub-like dataset folder that never change the data.
_IGNORED_DIRS = {".git", ".cache", "__pycache__"}


def _patterns(files) -> list[tuple[str | None, str]]:
    """(split or None, pattern) pairs from source_data_files (str, list or {split: str|list})."""
    if files is None:
        return []
    if isinstance(files, dict):
        return [(s, p) for s, v in files.items() for p in ([v] if isinstance(v, str) else v)]
    return [(None, p) for p in ([files] if isinstance(files, str) else files)]


def resolve_data_files(cfg) -> list[Path]:
    """Expand source_data_files like load_dataset does (relative to source_data_dir when given)."""
    base = Path(cfg.source_data_dir or ".").expanduser()
    out: list[Path] = []
    for _, pat in _patterns(cfg.source_data_files):
        full = Path(pat).expanduser()
        full = full if full.is_absolute() else base / full
        matches = sorted(glob.glob(str(full), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataError(f"data.origin.source_data_files: {pat!r} matches no file (looked for {full}); "
                            "fix the path or glob")
        out.extend(Path(m) for m in matches)
    return out


def _walk(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def local_source_files(cfg) -> list[Path] | None:
    """Every local file the source reads, or None for a hub id (not on this disk)."""
    if cfg.source == "binidx":
        prefix = str(cfg.source_data_files)
        for ext in (".bin", ".idx"):
            prefix = prefix[: -len(ext)] if prefix.endswith(ext) else prefix
        return [Path(prefix + ".bin"), Path(prefix + ".idx")]
    files = resolve_data_files(cfg) if cfg.source_data_files is not None else []
    if cfg.source_data_dir and cfg.source_data_files is None:
        if not Path(cfg.source_data_dir).is_dir():
            raise DataError(f"data.origin.source_data_dir: {cfg.source_data_dir} is not a directory")
        files.extend(_walk(Path(cfg.source_data_dir)))
    if cfg.builder():
        if not files:
            raise DataError(f"data.origin.source: builder {cfg.source!r} needs data.origin.source_data_files "
                            "(or data.origin.source_data_dir) naming local files")
        return files
    src = Path(str(cfg.source)).expanduser()
    if src.exists():  # a local folder laid out like a hub dataset repo
        return files + (_walk(src) if src.is_dir() else [src])
    return None


def source_fingerprint(cfg) -> dict:
    """What identifies the input: size and mtime of every local file, or the hub id + params
    (pin `revision` in source_dataset_params to make hub rebuilds reproducible)."""
    files = local_source_files(cfg)
    if files is None:
        return {"hub": cfg.source, "params": cfg.source_dataset_params or {}}
    stats = []
    for p in files:
        try:
            st = p.stat()
        except FileNotFoundError:
            if cfg.source == "binidx":
                raise DataError(f"binidx: {p} does not exist; data.origin.source_data_files must be the path prefix "
                                "of a .bin/.idx pair (without the extension)") from None
            raise DataError(f"data.origin.source_data_files: {p} does not exist") from None
        stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return {"files": stats}


# The direct read holds the whole table in memory (load_dataset memory-maps its Arrow cache), and
# what it saves is a fixed ~0.5-1 s: worth it for small corpora, irrelevant for large ones.
DIRECT_MAX_BYTES = 512 << 20


class ArrowRecords:
    """The slice of the `datasets.Dataset` interface the tokenize stage uses, over a pyarrow Table
    (what `read_jsonl_direct` returns). Batches are `to_pydict()`, as `Dataset[a:b]` gives them."""

    def __init__(self, table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def column_names(self) -> list[str]:
        return self.table.column_names

    def select_columns(self, columns: list[str]) -> ArrowRecords:
        return ArrowRecords(self.table.select(columns))

    def select(self, rows: range) -> ArrowRecords:
        assert rows.step == 1, rows  # the pipeline only ever slices a contiguous offset/length window
        return ArrowRecords(self.table.slice(rows.start, len(rows)))

    def __getitem__(self, rows: slice) -> dict[str, list]:
        start, stop, _ = rows.indices(self.table.num_rows)
        return self.table.slice(start, stop - start).to_pydict()


def _first_record(path: Path):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return json.loads(line.decode("utf-8-sig"))
    return None


def _plain_value(value) -> bool:
    """A string, or a non-empty list of objects whose values are all strings (conversation turns)."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and m and all(isinstance(x, str) for x in m.values()) for m in value)


def _plain_column(column) -> bool:
    """Arrow twin of `_plain_value` over a whole column, with no null anywhere: a null struct field
    means some turn lacked a key that others have, which datasets 5 stores as re-encoded JSON."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if not (pa.types.is_list(t) and pa.types.is_struct(t.value_type)) or column.null_count:
        return False
    st = t.value_type
    if st.num_fields == 0 or not all(pa.types.is_string(st.field(i).type) for i in range(st.num_fields)):
        return False
    turns = pc.list_flatten(column)
    return turns.null_count == 0 and all(pc.struct_field(turns, [i]).null_count == 0
                                         for i in range(st.num_fields))


def read_jsonl_direct(cfg, columns_for) -> ArrowRecords | None:
    """Local JSON-lines files with plain columns, parsed by `pyarrow.json` straight into one
    Arrow table: the parser the `datasets` json builder runs on the same bytes, minus the 1 s
    `import datasets` and the Arrow cache copy, so tokenizing starts at once (docs/benchmarks.md "Preload").

    `columns_for(names)` says which columns the record format reads. Anything this path cannot
    promise to read exactly as `load_dataset("json")` would returns None, and the caller takes
    that road instead: builder params, a data_dir, split mappings, JSON arrays, non-object lines,
    compressed files, a used column that is neither strings nor lists of all-string objects with
    the same keys (datasets 5 re-encodes nested objects whose keys vary), more than
    DIRECT_MAX_BYTES of files, or any parse error (whose diagnosis stays with the datasets path)."""
    if cfg.builder() != "json" or cfg.source_dataset_params or cfg.source_data_dir:
        return None
    if isinstance(cfg.source_data_files, dict) or cfg.source_dataset_split != "train" \
            or cfg.source_dataset_test_split:
        return None
    import pyarrow as pa
    import pyarrow.json as paj

    try:
        files = resolve_data_files(cfg)
        if not files or any(p.suffix.lower() not in (".jsonl", ".ndjson", ".json") for p in files):
            return None
        if sum(p.stat().st_size for p in files) > DIRECT_MAX_BYTES:
            return None
        first = _first_record(files[0])
        if not isinstance(first, dict):
            return None
        used = columns_for(list(first))
        if any(not _plain_value(first.get(c)) for c in used):
            return None
        tables = []
        for p in files:
            block = 4 << 20
            while True:  # a record larger than a block cannot be parsed: grow it, as datasets does
                try:
                    tables.append(paj.read_json(p, read_options=paj.ReadOptions(block_size=block)))
                    break
                except pa.ArrowInvalid as e:
                    if "straddling" not in str(e) or block >= p.stat().st_size:
                        return None
                    block *= 4
        if any(t.schema != tables[0].schema for t in tables):
            return None
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        used = columns_for(table.column_names)
        if not all(_plain_column(table.column(c)) for c in used):
            return None
        table.select(used).validate(full=True)  # invalid UTF-8 -> ArrowInvalid -> datasets path
    except (DataError, OSError, ValueError, pa.ArrowException):
        return None
    return ArrowRecords(table)


def load_source(cfg, cache_dir: str, num_proc: int, columns_for=None):
    """-> (train Dataset, test Dataset or None). Local builders cache into `cache_dir` (scratch,
    deleted after the build); hub ids use the normal HF cache. With `columns_for` (record format
    columns for a list of column names), plain-text JSON-lines files take `read_jsonl_direct`."""
    direct = read_jsonl_direct(cfg, columns_for) if columns_for is not None else None
    if direct is not None:
        return direct, None
    import datasets

    params = dict(cfg.source_dataset_params or {})
    kwargs: dict = {}
    builder = cfg.builder()
    src = builder or str(cfg.source)
    if builder == "text":
        # One document per file (newlines kept) unless the user asks otherwise: the line default
        # of the text builder strips every newline, which no RWKV user wants.
        params.setdefault("sample_by", "document")
    if cfg.source_data_files is not None:
        kwargs["data_files"] = cfg.source_data_files
    if cfg.source_data_dir:
        kwargs["data_dir"] = cfg.source_data_dir
    local = builder is not None or Path(src).expanduser().exists()
    if local:
        kwargs["cache_dir"] = cache_dir
        nfiles = len(local_source_files(cfg) or [])
        if nfiles > 1 and num_proc > 1:
            kwargs["num_proc"] = min(num_proc, nfiles)
    try:
        loaded = datasets.load_dataset(src, **kwargs, **params)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - translated into a user-facing error below
        raise diagnose_load_failure(cfg, e) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({cfg.source_dataset_split: loaded})

    def split(name: str, key: str):
        if name not in loaded:
            raise DataError(f"{key_path(key)}: the source has no split {name!r} (it has {sorted(loaded)})")
        return loaded[name]

    train = split(cfg.source_dataset_split, "source_dataset_split")
    test = split(cfg.source_dataset_test_split, "source_dataset_test_split") \
        if cfg.source_dataset_test_split else None
    return train, test


# ---------------------------------------------------------------------------------------------
# Diagnosis: find the file and line behind a load failure or a bad record

def _summary(exc: BaseException) -> str:
    msgs, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip().splitlines()
        if text:
            msgs.append(f"{type(exc).__name__}: {text[0][:200]}")
        exc = exc.__cause__ or exc.__context__
    return msgs[-1] if msgs else "unknown error"


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson") or path.name.lower().endswith((".jsonl.gz",))


def _check_json_file(path: Path) -> str | None:
    """First problem in a JSON / JSON-lines file: bad UTF-8, malformed line, non-object record,
    or a key whose type changes between records (which Arrow cannot store)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return f"{path}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8"
    if not _is_jsonl(path) and text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return f"{path}, line {e.lineno}: malformed JSON ({e.msg})"
        return None
    types: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            return (f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                    "fix or remove the line")
        if not isinstance(rec, dict):
            return f"{path}, line {lineno}: each line must be a JSON object, got {type(rec).__name__}"
        for k, v in rec.items():
            if v is None:
                continue
            t = type(v).__name__ if not isinstance(v, int | float) or isinstance(v, bool) else "number"
            first = types.setdefault(k, (t, lineno))
            if first[0] != t:
                return (f"{path}, line {lineno}: key {k!r} is a {t} here but a {first[0]} on line "
                        f"{first[1]}; every record must use the same type per key")
    return None


def _check_text_file(path: Path) -> str | None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return f"{path}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8"
    return None


def diagnose_load_failure(cfg, exc: BaseException) -> DataError:
    try:
        files = local_source_files(cfg) or []
    except DataError as e:
        return e
    for p in files:
        suffix = p.suffix.lower()
        if suffix in (".json", ".jsonl", ".ndjson"):
            problem = _check_json_file(p)
        elif suffix in (".txt", ".csv", ".tsv", ".md"):
            problem = _check_text_file(p)
        else:
            problem = None
        if problem:
            return DataError(problem)
    where = f"data.origin.source {cfg.source!r}"
    if cfg.source_data_files:
        where += f" with files {cfg.source_data_files!r}"
    return DataError(f"could not load {where}: {_summary(exc)}. Check data.origin.source, "
                     "data.origin.source_data_files and data.origin.source_dataset_params")


def locate_record(cfg, record: int) -> str | None:
    """'file, line N' of source record `record` (0-based, before offset) for JSON-lines sources,
    where records map to non-blank lines in file order; None when that mapping is unknown."""
    try:
        files = local_source_files(cfg) or []
    except DataError:
        return None
    if not files or not all(_is_jsonl(p) or p.suffix.lower() == ".json" for p in files):
        return None
    for p in files:  # a .json file holding one array has no record-per-line mapping
        with open(p, encoding="utf-8", errors="replace") as f:
            if f.read(4096).lstrip().startswith("["):
                return None
    left = record
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    if left == 0:
                        return f"{p}, line {lineno}"
                    left -= 1
    return None
