"""Benchmark: whole preload vs a single-process pure-Python make_data-style pipeline (docs/benchmarks.md "Preload").

    PYTHONPATH=. .venv/bin/python bench/preload.py [--mb 50] [--num_proc N]

1. Builds a >= 50 MB jsonl corpus ({"text": file}) from text files on this machine (Python sources
   of the stdlib and the venv, /usr/share/doc texts), deterministic order.
2. Times `python preload_datapath.py cfg.yaml --force` end to end (a subprocess: interpreter start,
   imports, the jsonl read, tokenize in worker processes, save_to_disk) with tokenizer world,
   one document per row, no test split (so rows are the documents in order).
3. Times two single-process make_data-style baselines in subprocesses (read lines, json.loads,
   greedy-trie encode, append 0, write .bin/.idx): `official` with TRIE_TOKENIZER from PyPI `rwkv`
   (the class RWKV-LM's make_data.py uses) and `repo` with rwkv/data/world_trie.py (~3x faster).
4. Checks the ids are identical, prints tokens/s and the ratios (target >= 5x vs the make_data
   style pipeline), and the cache-hit time (target < 2 s plus interpreter start).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
PY = sys.executable
ORACLE = Path(sys.prefix) / "oracle"  # PyPI's `rwkv`, kept apart by `make setup` (Makefile: ORACLE)

# The make_data-style pipeline: one process, read lines, json.loads, greedy-trie encode, append 0,
# write .bin (uint16) and a binidx .idx (docs/model-spec.md §6.1). `official` uses TRIE_TOKENIZER from PyPI `rwkv`
# (the tokenizer class RWKV-LM's make_data.py uses), run from / with ORACLE first on its path (a path entry
# wins over our editable install); `repo` uses rwkv/data/world_trie.py, our faster reference trie.
BASELINE = r"""
import json, struct, sys, time
import numpy as np
corpus, prefix, which = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if which == "official":
    import os, rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    tok = TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
else:
    from rwkv.data.world_trie import WorldTrie
    tok = WorldTrie()
sizes, n = [], 0
with open(corpus, encoding="utf-8") as f, open(prefix + ".bin", "wb") as out:
    for line in f:
        ids = tok.encode(json.loads(line)["text"])
        ids.append(0)
        out.write(np.asarray(ids, dtype=np.uint16).tobytes())
        sizes.append(len(ids))
        n += len(ids)
sz = np.asarray(sizes, dtype="<i4")
ptr = np.zeros(len(sz), dtype="<i8")
ptr[1:] = np.cumsum(sz[:-1].astype(np.int64) * 2)
with open(prefix + ".idx", "wb") as f:
    f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(sz), len(sz) + 1))
    f.write(sz.tobytes() + ptr.tobytes() + np.arange(len(sz) + 1, dtype="<i8").tobytes())
print(json.dumps({"tokens": n, "seconds": time.perf_counter() - t0}))
"""


def build_corpus(path: Path, target_mb: float) -> tuple[int, int]:
    roots = [Path(sys.base_prefix) / "lib", Path(sys.prefix) / "lib", Path("/usr/lib/python3"),
             Path("/usr/share/doc")]
    suffixes = {".py", ".txt", ".md", ".rst"}
    total, docs, seen = 0, 0, set()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for root in roots:
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if p.suffix not in suffixes or p.is_symlink():
                        continue
                    try:
                        st = p.stat()
                        if st.st_size > 1 << 20 or st.st_size < 64 or (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                        text = p.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError):
                        continue
                    out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    total += len(text.encode("utf-8"))
                    docs += 1
                    if total >= target_mb * 1e6:
                        break
                if total >= target_mb * 1e6:
                    break
            if total >= target_mb * 1e6:
                break
    os.replace(tmp, path)
    return docs, total


def run(cmd: list[str], cwd=ROOT, oracle: bool = False):
    """-> (wall s, CompletedProcess, CPU s of the whole process tree)."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    if oracle:
        env["PYTHONPATH"] = str(ORACLE)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return dt, proc, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def baseline(corpus: Path, which: str):
    """-> (wall s, tokens, .bin/.idx prefix, CPU s)."""
    prefix = WORK / f"baseline_{which}"
    if which == "official":  # PyPI rwkv: from its own folder, with a cwd outside the repo
        dt, proc, cpu = run([PY, "-c", BASELINE, str(corpus), str(prefix), which], cwd="/", oracle=True)
    else:
        dt, proc, cpu = run([PY, "-c", BASELINE, str(corpus), str(prefix), which])
    return dt, json.loads(proc.stdout.strip().splitlines()[-1])["tokens"], prefix, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB of UTF-8 text")
    ap.add_argument("--num_proc", type=int, default=None, help="preload worker processes (default: CPUs)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are reported")
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    corpus = WORK / f"corpus_{args.mb:g}mb.jsonl"
    if not corpus.exists():
        docs, nbytes = build_corpus(corpus, args.mb)
    else:
        docs = sum(1 for _ in open(corpus, encoding="utf-8"))
        nbytes = sum(len(json.loads(line)["text"].encode()) for line in open(corpus, encoding="utf-8"))
    print(f"corpus: {corpus} — {docs:,} documents, {nbytes / 1e6:.1f} MB of text")

    cfg = WORK / "preload_bench.yaml"
    data_path = WORK / "preloaded"
    cfg.write_text(
        "# bench/preload.py: whole-preload throughput (world tokenizer, one document per row)\n"
        "trainer: {max_steps: 1}   # ignored by preload_datapath.py\n"
        "data:\n"
        f"  data_path: {data_path}\n  origin: {{source: json, source_data_files: {corpus}}}\n"
        "  format: {tokenizer: world}\n"
        + (f"  rows: {{test_split: 0, num_proc: {args.num_proc}}}\n" if args.num_proc else "  rows: {test_split: 0}\n")
    )

    t_start, _, _ = run([PY, "-c", "pass"])
    # Interleaved rounds (preload, official, repo), so that all three see similar load from other
    # processes on a shared machine; medians are reported. CPU seconds (user+sys of the process tree)
    # are less sensitive to contention than wall time.
    runs: dict[str, list[tuple[float, float]]] = {"preload": [], "official": [], "repo": []}
    builds, prefixes = [], {}
    for _ in range(args.repeat):
        t, _, cpu = run([PY, "preload_datapath.py", str(cfg), "--force"])
        runs["preload"].append((t, cpu))
        builds.append(json.loads((data_path / "rwkv_manifest.json").read_text())["seconds"]["total"])
        for which in ("official", "repo"):
            t, ntok, prefixes[which], cpu = baseline(corpus, which)
            runs[which].append((t, cpu))
    manifest = json.loads((data_path / "rwkv_manifest.json").read_text())
    tokens = manifest["splits"]["train"]["tokens"]
    assert ntok == tokens, (ntok, tokens)
    hits = []
    for _ in range(args.repeat):
        t, hit, _ = run([PY, "preload_datapath.py", str(cfg)])
        assert "cache hit" in hit.stderr, hit.stderr
        hits.append(t)
    t_hit = statistics.median(hits)

    # Identical ids: the preloaded rows in order vs each baseline's .bin stream.
    import datasets
    import numpy as np

    from rwkv.data.binidx import BinIdxReader

    datasets.disable_progress_bars()
    train = datasets.load_from_disk(str(data_path))["train"]
    ours = train.data.table.column("input_ids").combine_chunks().flatten().to_numpy()
    identical = {}
    for which, prefix in prefixes.items():
        theirs = np.asarray(BinIdxReader(prefix).tokens(), dtype=np.int32)
        identical[which] = ours.shape == theirs.shape and bool(np.array_equal(ours, theirs))

    med = {k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v))
           for k, v in runs.items()}
    best = {k: (min(t for t, _ in v), min(c for _, c in v)) for k, v in runs.items()}
    print(f"tokens: {tokens:,}; ids identical to the baselines: {identical}")
    print(f"interpreter start (python -c pass): {t_start:.2f} s; {args.repeat} interleaved rounds")
    labels = {"preload": f"preload_datapath.py, whole command, {os.cpu_count()} CPUs",
              "official": "make_data style, PyPI rwkv TRIE_TOKENIZER, 1 process",
              "repo": "make_data style, rwkv/data/world_trie.py, 1 process"}
    for k in runs:
        extra = f"; in-process build {statistics.median(builds):.2f} s" if k == "preload" else ""
        print(f"{k:8s} ({labels[k]}): median {med[k][0]:.2f} s = {tokens / med[k][0] / 1e6:.2f} M tokens/s, "
              f"best {best[k][0]:.2f} s = {tokens / best[k][0] / 1e6:.2f} M tokens/s; "
              f"CPU s median {med[k][1]:.2f}{extra}; runs {', '.join(f'{t:.2f}' for t, _ in runs[k])} s")
    for k in ("official", "repo"):
        print(f"ratio vs {k}: median {med[k][0] / med['preload'][0]:.1f}x, "
              f"best {best[k][0] / best['preload'][0]:.1f}x wall; {med[k][1] / med['preload'][1]:.1f}x CPU "
              "(target >= 5x vs the make_data-style pipeline)")
    print(f"cache hit (whole command, median of {len(hits)}): {t_hit:.2f} s; minus interpreter start: "
          f"{t_hit - t_start:.2f} s (target < 2 s)")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not all(identical.values()):
        sys.exit("ids differ")


if __name__ == "__main__":
    main()
