"""The preload pipeline: config -> tokenized, masked, packed DatasetDict on disk (docs/design.md §3.6, docs/data.md).

    status = data_status(cfg)            # cheap: hash of config + tokenizer + source file stats
    manifest = preload(cfg)              # cache hit, or build into a temp dir and rename

Stages: load source -> offset/length slice (once) -> tokenize (worker processes, each with its
own lazily-built tokenizer) -> filter -> test split -> rechunk | pack | one document per row ->
sort -> save_to_disk + manifest -> atomic rename. Nothing is written to `data_path` unless every
stage succeeded; a failed build leaves an existing good dataset untouched (docs/design.md §5.13).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ..atomic import swap_in_dir
from ..errors import DataError
from .sources import source_fingerprint

PIPELINE_VERSION = 2  # bump when the bytes written for the same config change
MANIFEST = "rwkv_manifest.json"


def _stderr(msg: str) -> None:
    print(f"[preload] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Cache key and status

def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(cfg, tokenizer=None) -> str:
    """Hash of everything except the source files: what fit can still check when the sources are
    not on this machine (data_path copied to a training cluster)."""
    from .tokenizers import get_tokenizer

    tok = tokenizer or get_tokenizer(cfg.tokenizer)
    return _sha({"pipeline_version": PIPELINE_VERSION, "config": cfg.cache_config(),
                 "tokenizer": tok.identity()})


def cache_key(cfg, tokenizer=None) -> tuple[str, dict]:
    from .tokenizers import get_tokenizer

    tok = tokenizer or get_tokenizer(cfg.tokenizer)
    details = {
        "pipeline_version": PIPELINE_VERSION,
        "config": cfg.cache_config(),
        "tokenizer": tok.identity(),
        "source": source_fingerprint(cfg),
    }
    return _sha(details), details


def read_manifest(data_path) -> dict | None:
    try:
        with open(Path(data_path) / MANIFEST, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def data_status(cfg, key: str | None = None) -> tuple[str, dict | None]:
    """'ok', 'missing' (nothing there), 'stale' (built from another config/source) or 'foreign'
    (a directory this pipeline did not write)."""
    path = Path(cfg.data_path)
    if not path.exists():
        return "missing", None
    manifest = read_manifest(path)
    if manifest is None:
        return ("foreign" if path.is_file() or any(path.iterdir()) else "missing"), None
    if not (path / "dataset_dict.json").is_file():
        return "stale", manifest
    if key is None:
        try:
            key = cache_key(cfg)[0]
        except DataError as e:
            # The source files are not here (e.g. data_path was copied to a training machine): the
            # config and tokenizer can still be checked, the source cannot.
            if manifest.get("config_hash") == config_hash(cfg):
                warnings.warn(f"{cfg.data_path}: cannot check the source files ({e}); using the "
                              "preloaded data built from this config", stacklevel=2)
                return "ok", manifest
            return "stale", manifest
    return ("ok" if manifest.get("hash") == key else "stale"), manifest


# ---------------------------------------------------------------------------------------------
# Tokenize stage

_TOKENIZER = None  # this worker's tokenizer, its backend built once by _init_worker


def _init_worker(tokenizer) -> None:
    global _TOKENIZER
    _TOKENIZER = tokenizer
    tokenizer.encode_batch(["warm up"])  # build the backend now (0.2-0.5 s for world), not in a task


def _tokenize_unit(task):
    formatter, batch, row0 = task
    if _TOKENIZER is not None:
        formatter.tokenizer = _TOKENIZER
    try:
        return formatter(batch, row0)
    except (Exception, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # e.g. a Rust panic: a Pool worker dying on it would hang the parent
        raise RuntimeError(f"tokenizer failed on records {row0}..: {e!r}") from None


class _Workers:
    """Tokenizer processes, started before the source is loaded so that each builds its tokenizer
    backend while the parent imports `datasets` and parses the source. Tasks carry the records
    themselves (workers never import `datasets`); results come back as numpy arrays, in order."""

    def __init__(self, tokenizer, n: int):
        self.pool = None
        if n > 1:
            # fork: cheap start; nothing heavy (pyarrow, torch threads) has run in the parent yet.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(n, initializer=_init_worker, initargs=(tokenizer,))
        else:
            global _TOKENIZER
            _TOKENIZER = tokenizer

    def imap(self, tasks):
        return self.pool.imap(_tokenize_unit, tasks) if self.pool else map(_tokenize_unit, tasks)

    def close(self) -> None:
        global _TOKENIZER
        _TOKENIZER = None
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _units(n: int, workers: int) -> list[tuple[int, int]]:
    per = max(1, min(2000, -(-n // (workers * 8))))
    return [(a, min(n, a + per)) for a in range(0, n, per)]


class _Progress:
    def __init__(self, progress, total: int, what: str):
        self.progress, self.total, self.what = progress, total, what
        self.t0 = self.last = time.perf_counter()
        self.rows = self.tokens = 0

    def add(self, rows: int, tokens: int, final: bool = False) -> None:
        self.rows += rows
        self.tokens += tokens
        now = time.perf_counter()
        if final or now - self.last >= 5:
            self.last = now
            elapsed = max(now - self.t0, 1e-9)
            rate = self.tokens / elapsed
            left = "" if final or not self.rows else \
                f", ETA {elapsed * (self.total - self.rows) / self.rows:.0f} s"  # by records done so far
            self.progress(f"{self.what}: {self.rows:,}/{self.total:,} records, {self.tokens:,} tokens, "
                          f"{rate / 1e6:.2f}M tokens/s{left}")


def _tokenize(ds, formatter, writer, row0: int, workers: _Workers, progress, cfg) -> tuple[list, list]:
    """Stream tokenized records of `ds` into `writer` in order. Returns per-record lengths/learned."""
    import pyarrow as pa

    from .formats import RowError
    from .rows import list_array
    from .rows import schema as doc_schema
    from .sources import locate_record

    lengths, learned = [], []
    nproc = getattr(workers.pool, "_processes", 1) if workers.pool else 1
    units = _units(len(ds), nproc)
    bar = _Progress(progress, len(ds), "tokenized")
    tasks = ((formatter, ds[a:b], row0 + a) for a, b in units)
    try:
        for (a, b), (flat, mask, offsets, lrn) in zip(units, workers.imap(tasks)):
            writer.write_batch(pa.RecordBatch.from_arrays(
                [list_array(offsets, flat, pa.int32()), list_array(offsets, mask, pa.int8())],
                schema=doc_schema(False)))
            lengths.append(np.diff(offsets))
            learned.append(lrn)
            bar.add(b - a, len(flat))
    except RowError as e:
        where = locate_record(cfg, e.row)
        raise DataError(f"{where}: {e.detail}" + (f" (column {e.column!r})" if e.column else "")
                        if where else str(e)) from None
    bar.add(0, 0, final=True)
    return lengths, learned


def _tokenize_binidx(cfg, tokenizer, writer, progress):
    """binidx items are documents that already end with their separator (make_data, docs/model-spec.md §6.1)."""
    import pyarrow as pa

    from .binidx import BinIdxReader
    from .rows import cumsum0, list_array, slice_bounds
    from .rows import schema as doc_schema

    reader = BinIdxReader(cfg.source_data_files)
    a, b = slice_bounds(cfg.dataset_offset, cfg.dataset_length, len(reader))
    lengths, learned = [], []
    bar = _Progress(progress, b - a, "read binidx")
    step = 100_000
    for i in range(a, b, step):
        j = min(b, i + step)
        sizes = reader.sizes[i:j].astype(np.int64)
        start = int(reader.pointers[i]) // reader.dtype.itemsize if j > i else 0
        vals = np.asarray(reader.tokens()[start : start + int(sizes.sum())]).astype(np.int32)
        if len(vals) and int(vals.max()) >= tokenizer.vocab_size:
            raise DataError(f"binidx: {reader.bin_path} holds token id {int(vals.max())}, outside the "
                            f"{tokenizer.name} vocab ({tokenizer.vocab_size}); set data.format.tokenizer to the "
                            "tokenizer that wrote it")
        offsets = cumsum0(sizes)
        writer.write_batch(pa.RecordBatch.from_arrays(
            [list_array(offsets, vals, pa.int32()),
             list_array(offsets, np.ones(len(vals), np.int8), pa.int8())],
            schema=doc_schema(False)))
        lengths.append(sizes)
        learned.append(np.maximum(sizes - 1, 0))
        bar.add(j - i, len(vals))
    bar.add(0, 0, final=True)
    return lengths, learned, b - a


# ---------------------------------------------------------------------------------------------
# Build

def _check_target(cfg) -> None:
    path = Path(cfg.data_path)
    status, _ = data_status(cfg, key="-")
    if status == "foreign":
        raise DataError(f"data.data_path: {path} exists but was not written by preload_datapath.py "
                        f"(no {MANIFEST}); it is left untouched. Remove it or choose another data_path")


def _swap_in(build: Path, target: Path) -> None:
    """Replace `target` by `build` with two renames on the same file system."""
    swap_in_dir(build, target)


def preload(cfg, *, force: bool = False, progress=_stderr) -> dict:
    """Build `cfg.data_path` unless its manifest already matches; returns the manifest."""
    from .tokenizers import get_tokenizer

    cfg.validate()
    if cfg.source is None:
        status, manifest = data_status(cfg, key="-")
        if status == "missing":
            raise DataError(f"data.origin.source is null, so data.data_path must already hold a dataset, but "
                            f"{cfg.data_path} does not exist; set data.origin.source to build one")
        progress(f"data.origin.source is null: using {cfg.data_path} as it is")
        return manifest or {}
    if cfg.sampler == "official":
        from .binidx import BinIdxReader

        reader = BinIdxReader(cfg.source_data_files)
        progress(f"sampler official reads {reader.bin_path} directly ({reader.num_tokens:,} tokens); "
                 "nothing to preload")
        return {}
    t0 = time.perf_counter()
    tokenizer = get_tokenizer(cfg.tokenizer)
    if cfg.eod_token_id is not None and cfg.eod_token_id >= tokenizer.vocab_size:
        raise DataError(f"data.format.eod_token_id: {cfg.eod_token_id} is outside the {tokenizer.name} vocab "
                        f"({tokenizer.vocab_size})")
    key, details = cache_key(cfg, tokenizer)
    status, manifest = data_status(cfg, key)
    if status == "ok" and not force:
        progress(f"cache hit: {cfg.data_path} matches this config (hash {key[:12]}); "
                 f"{manifest['splits']['train']['rows']:,} train rows")
        return manifest
    _check_target(cfg)
    target = Path(cfg.data_path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.scratch-", dir=target.parent))
    why = {"missing": "new", "ok": "forced"}.get(status, "rebuild: " + status)
    progress(f"building {target} ({why}), tokenizer {tokenizer.name}, {cfg.resolved_num_proc()} processes")
    try:
        manifest = _build(cfg, tokenizer, key, details, build, scratch, progress)
        _swap_in(build, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
    sp = manifest["splits"]
    progress(f"done in {time.perf_counter() - t0:.1f} s: train {sp['train']['rows']:,} rows / "
             f"{sp['train']['tokens']:,} tokens, test {sp['test']['rows']:,} rows -> {target}")
    return manifest


def _tokenize_source(cfg, tokenizer, writer, workers, scratch: Path, progress, timing: dict):
    from . import rows as R
    from .formats import RecordFormatter
    from .sources import ArrowRecords, diagnose_load_failure, load_source

    t0 = time.perf_counter()
    train_src, test_src = load_source(cfg, str(scratch / "hf_cache"), cfg.resolved_num_proc(),
                                      columns_for=lambda names: RecordFormatter(cfg, tokenizer, names).columns)
    a, b = R.slice_bounds(cfg.dataset_offset, cfg.dataset_length, len(train_src))
    if b <= a:
        raise DataError(f"data.rows.dataset_offset / data.rows.dataset_length select no record of the "
                        f"{len(train_src)} in the source")
    timing["load"] = time.perf_counter() - t0
    reader = "pyarrow.json" if isinstance(train_src, ArrowRecords) else "datasets.load_dataset"
    progress(f"loaded {len(train_src):,} records ({timing['load']:.1f} s, {reader}); using {b - a:,}")
    formatter = RecordFormatter(cfg, tokenizer, train_src.column_names)
    train_src = train_src.select_columns(formatter.columns)
    if (a, b) != (0, len(train_src)):
        train_src = train_src.select(range(a, b))
    try:
        lengths, learned = _tokenize(train_src, formatter, writer, a, workers, progress, cfg)
        n_test_src = 0
        if test_src is not None:
            test_fmt = RecordFormatter(cfg, tokenizer, test_src.column_names)
            l2, r2 = _tokenize(test_src.select_columns(test_fmt.columns), test_fmt, writer, 0, workers,
                               progress, cfg)
            n_test_src = len(test_src)
            lengths, learned = lengths + l2, learned + r2
    except UnicodeDecodeError as e:
        # The JSON reader stores bytes unchecked; they fail only when read back: find file and line.
        raise diagnose_load_failure(cfg, e) from None
    return lengths, learned, b - a, n_test_src, reader


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + sys) of this process and of its reaped children (the workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _build(cfg, tokenizer, key, details, build: Path, scratch: Path, progress) -> dict:
    """Tokenize the source into scratch, choose the train/test documents, write their rows and save the
    dataset into `build` with its manifest."""
    t0, timing = time.perf_counter(), {}
    cpu0 = _cpu()
    tok_path = str(scratch / "documents.arrow")
    lengths, learned, n_records, n_test_src, reader = _tokenize_documents(cfg, tokenizer, tok_path, scratch,
                                                                          progress, timing)
    timing["tokenize"] = time.perf_counter() - t0 - timing.get("load", 0.0)
    train_docs, test_docs, dropped = _select_documents(cfg, lengths, learned, n_test_src, progress)

    import pyarrow as pa

    from . import rows as R

    with pa.memory_map(tok_path) as src:
        table = R.TokenTable(pa.ipc.open_stream(src).read_all())
        stats, split_files = {}, {}
        for name, docs in (("train", train_docs), ("test", test_docs)):
            split_files[name] = str(scratch / f"{name}.arrow")
            stats[name] = _write_rows(cfg, table, docs, lengths, split_files[name], sortable=name == "train")
        timing["rows"] = time.perf_counter() - t0 - sum(timing.values())
        import datasets

        dd = datasets.DatasetDict({n: datasets.Dataset.from_file(p) for n, p in split_files.items()})
        # datasets writes no shard for an empty split and then cannot load it back: force one.
        dd.save_to_disk(str(build), num_shards={n: 1 for n, d in dd.items() if len(d) == 0})
        del dd, table
    timing["save"] = time.perf_counter() - t0 - sum(timing.values())
    if stats["train"]["rows"] == 0:
        raise DataError("no train row left after rechunking/packing (every row lacked a learned token)")
    manifest = {
        "format": "rwkv-infctx-preload",
        "hash": key,
        "config_hash": config_hash(cfg, tokenizer),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eod_token_id": cfg.eod_token_id,
        "layout": "rechunked" if cfg.rechunks() else ("packed" if cfg.packing_enable else "documents"),
        "source_reader": reader,
        "source_records": int(n_records + n_test_src),
        "documents_kept": int(len(train_docs) + len(test_docs)),
        "dropped": dropped,
        "splits": stats,
        "seconds": {**{k: round(v, 3) for k, v in timing.items()},
                    "total": round(time.perf_counter() - t0, 3)},
        "cpu_seconds": {k: round(b - a, 3) for k, a, b in zip(("main", "workers"), cpu0, _cpu())},
        "key": details,
    }
    with open(build / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, default=str)
    return manifest


def _tokenize_documents(cfg, tokenizer, tok_path: str, scratch: Path, progress, timing: dict):
    """Every source document's tokens into the arrow stream `tok_path`. Returns the per-document token and
    learned-token counts, the number of records read, how many of them came from a separate test source
    (they follow the others), and which reader loaded them."""
    # Fork the tokenizer workers first, before pyarrow/datasets are even imported here.
    workers = _Workers(tokenizer, cfg.resolved_num_proc()) if cfg.source != "binidx" else None
    try:
        import pyarrow as pa

        from . import rows as R

        writer = pa.ipc.new_stream(tok_path, R.schema(False))
        n_test_src, reader = 0, "binidx"
        if workers is None:
            lengths, learned, n_records = _tokenize_binidx(cfg, tokenizer, writer, progress)
        else:
            lengths, learned, n_records, n_test_src, reader = _tokenize_source(
                cfg, tokenizer, writer, workers, scratch, progress, timing)
        writer.close()
    finally:
        if workers is not None:
            workers.close()
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    learned = np.concatenate(learned) if learned else np.zeros(0, np.int64)
    return lengths, learned, n_records, n_test_src, reader


def _select_documents(cfg, lengths, learned, n_test_src: int, progress):
    """Filter by size, then split into train and test documents (the test split never shares a packed row
    with train). Returns (train document indices, test document indices, dropped counts by reason)."""
    from . import rows as R

    keep, dropped = R.keep_mask(lengths, learned, cfg.min_token_size, cfg.max_token_size)
    n_pool = len(lengths) - n_test_src
    pool = np.nonzero(keep[:n_pool])[0]
    if len(pool) == 0:
        why = ", ".join(f"{v:,} {k}" for k, v in dropped.items()) or "the source is empty"
        raise DataError(f"no document left after filtering ({n_pool:,} read; dropped: {why}); check "
                        "data.rows.min_token_size / data.rows.max_token_size and the text column")
    if n_test_src:
        train_docs, test_docs = pool, n_pool + np.nonzero(keep[n_pool:])[0]
    else:
        train_docs, test_docs = R.split_test(pool, cfg.test_split, cfg.test_split_shuffle, cfg.seed)
    if dropped:
        progress("dropped " + ", ".join(f"{v:,} ({k})" for k, v in dropped.items()))
    return train_docs, test_docs, dropped


def _write_rows(cfg, table, docs, lengths, path: str, sortable: bool) -> dict:
    """One split's rows: rechunked, packed or one document per row, sorted by length if asked (`sortable`:
    only the train split is ever reordered). Returns the writer's row/token counts."""
    from . import rows as R

    rechunk = cfg.rechunks()
    w = R.RowWriter(path, with_docs=rechunk or cfg.packing_enable)
    if rechunk:
        R.write_rechunked(table, docs, lengths, cfg.text_rechunk_size, w)
    else:
        if cfg.packing_enable:
            pack = R.pack_in_sequence if cfg.packing_in_sequence else R.pack_best_fit
            order, bounds = pack(docs, lengths, cfg.packing_max_len)
        else:
            order, bounds = R.one_per_row(docs)
        if cfg.sort_by_length and sortable:
            order, bounds = R.sort_rows(order, bounds, lengths, cfg.sort_asc)
        R.write_rows(table, order, bounds, lengths, w)
    return w.close()
