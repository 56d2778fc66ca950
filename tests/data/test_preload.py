"""The whole preload: sources, splits, filters, packing, rechunking, cache hit/miss, atomic output."""

import json
import os
import random

import numpy as np
import pytest

from rwkv.data.config import DataConfig
from rwkv.data.preload import MANIFEST, data_status, preload
from rwkv.errors import DataError
from tests.data.util import learned_text, text_of, write_jsonl


def docs_texts(n=40, seed=0):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta\n"]
    return [f"doc{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for i in range(n)]


@pytest.fixture
def corpus(tmp_path):
    texts = docs_texts()
    path = write_jsonl(tmp_path / "src" / "train.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    return path, texts


def row_texts(ds):
    return [text_of(r) for r in ds["input_ids"]]


def test_json_documents_split_and_manifest(build, corpus):
    path, texts = corpus
    cfg, m, dd = build(source="json", source_data_files=str(path), test_split=0.25)
    assert set(dd) == {"train", "test"}
    assert dd["train"].column_names == ["input_ids", "loss_mask"]
    assert str(dd["train"].features["input_ids"].feature) .startswith("Value('int32'")
    assert str(dd["train"].features["loss_mask"].feature).startswith("Value('int8'")
    assert len(dd["test"]) == 10 and len(dd["train"]) == 30
    got = sorted(row_texts(dd["train"]) + row_texts(dd["test"]))
    assert got == sorted(t + "|" for t in texts)
    # train keeps dataset order
    tr = row_texts(dd["train"])
    assert tr == [t + "|" for t in texts if t + "|" in tr]
    assert m["splits"]["train"]["rows"] == 30 and m["splits"]["test"]["rows"] == 10
    assert m["splits"]["train"]["tokens"] == sum(len(r) for r in dd["train"]["input_ids"])
    assert m["splits"]["train"]["learned_tokens"] == sum(sum(r) - r[0] for r in dd["train"]["loss_mask"])
    assert m["layout"] == "documents" and m["tokenizer"] == "bytes" and m["vocab_size"] == 320
    on_disk = json.loads((tmp := __import__("pathlib").Path(cfg.data_path) / MANIFEST).read_text())
    assert on_disk["hash"] == m["hash"] and tmp.exists()


def test_packing_records_document_boundaries(build, corpus):
    path, texts = corpus
    _, m, dd = build(source="json", source_data_files=str(path), packing_enable=True, packing_max_len=200)
    assert dd["train"].column_names == ["input_ids", "loss_mask", "doc_offsets"]
    seen = []
    for ids, offs in zip(dd["train"]["input_ids"], dd["train"]["doc_offsets"]):
        assert offs[0] == 0 and (len(ids) <= 200 or len(offs) == 1)
        for a, b in zip(offs, offs[1:] + [len(ids)]):
            assert ids[b - 1] == 0  # every document ends with its end-of-document token
            seen.append(text_of(ids[a:b]))
    assert sorted(seen) == sorted(t + "|" for t in texts)
    assert m["layout"] == "packed" and m["splits"]["train"]["documents"] == len(texts)


def test_text_source_rechunks_whole_files(build, tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    (tmp_path / "b.txt").write_text("other file")
    _, m, dd = build(source="text", source_data_files=str(tmp_path / "*.txt"), text_rechunk_size=10)
    stream = "".join(row_texts(dd["train"]))
    assert stream == "first line\nsecond line\n|other file|"  # newlines kept: one document per file
    assert [len(r) for r in dd["train"]["input_ids"]] == [10, 10, 10, 5]
    assert dd["train"]["doc_offsets"][2] == [0, 4]  # 23 characters + end of document
    assert m["layout"] == "rechunked"


def test_rechunk_force_on_json(build, corpus):
    path, texts = corpus
    _, _, dd = build(source="json", source_data_files=str(path), text_rechunk_force=True,
                     text_rechunk_size=64)
    assert "".join(row_texts(dd["train"])) == "".join(t + "|" for t in texts)


def test_csv_and_parquet_sources(build, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("text,n\n\"a, b\",1\nc,2\n")
    _, _, dd = build(source="csv", source_data_files=str(tmp_path / "d.csv"))
    assert row_texts(dd["train"]) == ["a, b|", "c|"]
    pq.write_table(pa.table({"body": ["p1", "p22"]}), tmp_path / "d.parquet")
    _, _, dd = build(source="parquet", source_data_files=str(tmp_path / "d.parquet"), custom_text_key="body")
    assert row_texts(dd["train"]) == ["p1|", "p22|"]


def test_hub_like_local_folder_with_test_split(build, tmp_path):
    repo = tmp_path / "org__dataset"
    write_jsonl(repo / "data" / "train-00000-of-00001.jsonl",
                [{"prompt": f"Q{i}", "completion": f" A{i}"} for i in range(6)])
    write_jsonl(repo / "data" / "validation-00000-of-00001.jsonl", [{"prompt": "Qv", "completion": " Av"}])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: data/train-*.jsonl\n"
        "  - split: validation\n    path: data/validation-*.jsonl\n---\n# a dataset card\n")
    _, m, dd = build(source=str(repo), source_dataset_test_split="validation")
    assert row_texts(dd["test"]) == ["Qv Av|"]
    assert learned_text(dd["train"][0]["input_ids"], dd["train"][0]["loss_mask"]) == "__ A0|"
    assert len(dd["train"]) == 6 and m["source_records"] == 7


def test_source_data_dir_resolves_relative_files(build, corpus):
    path, texts = corpus
    _, _, dd = build(source="json", source_data_dir=str(path.parent), source_data_files="*.jsonl")
    assert len(dd["train"]) == len(texts)


def test_offset_and_length_applied_once(build, corpus):
    path, texts = corpus
    _, m, dd = build(source="json", source_data_files=str(path), dataset_offset=5, dataset_length=10,
                     packing_enable=True, packing_max_len=10_000)
    seen = [text_of(ids[a:b]) for ids, offs in zip(dd["train"]["input_ids"], dd["train"]["doc_offsets"])
            for a, b in zip(offs, offs[1:] + [len(ids)])]
    assert sorted(seen) == sorted(t + "|" for t in texts[5:15])
    assert m["source_records"] == 10


def test_min_max_token_filters(build, corpus):
    path, texts = corpus
    lens = [len(t.encode()) + 1 for t in texts]
    _, m, dd = build(source="json", source_data_files=str(path), min_token_size=50, max_token_size=150)
    assert sorted(len(r) for r in dd["train"]["input_ids"]) == sorted(n for n in lens if 50 <= n <= 150)
    assert m["dropped"]["min_token_size=50"] == sum(n < 50 for n in lens)


def test_sort_by_length(build, corpus):
    path, _ = corpus
    _, _, dd = build(source="json", source_data_files=str(path), sort_by_length=True, sort_asc=False)
    lens = [len(r) for r in dd["train"]["input_ids"]]
    assert lens == sorted(lens, reverse=True)


def test_cache_hit_does_not_rebuild_and_any_change_does(build, corpus):
    path, _ = corpus
    kw = dict(source="json", source_data_files=str(path), test_split=2)
    cfg, m1, _ = build(**kw)
    ino = os.stat(cfg.data_path).st_ino
    msgs = []
    m2 = preload(DataConfig.from_keys(**{**cfg.to_dict(), "micro_batch_size": 8, "shuffle": False, "num_proc": 2}),
                 progress=msgs.append)  # loader-only keys and num_proc are not part of the key
    assert m2["created"] == m1["created"] and os.stat(cfg.data_path).st_ino == ino
    assert "cache hit" in msgs[0] and data_status(cfg)[0] == "ok"
    # an option change rebuilds
    cfg3, m3, _ = build(**{**kw, "test_split": 3})
    assert m3["hash"] != m1["hash"] and data_status(cfg)[0] == "stale"
    # touching the source rebuilds
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert data_status(cfg3)[0] == "stale"
    _, m4, _ = build(**{**kw, "test_split": 3})
    assert m4["hash"] != m3["hash"]
    # so does another tokenizer
    assert data_status(DataConfig.from_keys(**{**cfg3.to_dict(), "tokenizer": "world"}))[0] == "stale"


def test_num_proc_does_not_change_output(build, corpus, tmp_path):
    path, _ = corpus
    _, _, one = build(source="json", source_data_files=str(path), data_path=str(tmp_path / "one"))
    _, _, two = build(source="json", source_data_files=str(path), data_path=str(tmp_path / "two"), num_proc=2)
    assert one["train"]["input_ids"] == two["train"]["input_ids"]
    assert one["train"]["loss_mask"] == two["train"]["loss_mask"]


def test_world_tokenizer_end_to_end_matches_trie(build, corpus):
    from rwkv.data.world_trie import WorldTrie

    path, texts = corpus
    _, m, dd = build(source="json", source_data_files=str(path), tokenizer="world", num_proc=2)
    trie = WorldTrie()
    assert dd["train"]["input_ids"] == [trie.encode(t) + [0] for t in texts]
    assert m["vocab_size"] == 65536


def test_failed_rebuild_keeps_good_dataset(build, corpus, tmp_path):
    path, _ = corpus
    cfg, m1, _ = build(source="json", source_data_files=str(path))
    with open(path, "a") as f:
        f.write('{"text": "broken\n')
    with pytest.raises(DataError, match=r"train\.jsonl, line 41: malformed JSON"):
        preload(cfg, progress=lambda s: None)
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["created"] == m1["created"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers == []


def test_foreign_data_path_is_refused(tmp_path, corpus):
    path, _ = corpus
    target = tmp_path / "mydir"
    target.mkdir()
    (target / "precious.txt").write_text("do not delete")
    cfg = DataConfig.from_keys(data_path=str(target), source="json", source_data_files=str(path), tokenizer="bytes",
                               num_proc=1)
    with pytest.raises(DataError, match="was not written by preload_datapath.py"):
        preload(cfg, progress=lambda s: None)
    assert (target / "precious.txt").read_text() == "do not delete"


def test_binidx_source_rows_are_items(build, tmp_path):
    from rwkv.data.binidx import BinIdxWriter

    items = [np.array([5, 6, 7, 0]), np.array([8, 9, 0]), np.array([10, 0])]
    w = BinIdxWriter(tmp_path / "d", np.uint16)
    for it in items:
        w.add_item(it)
    w.close()
    _, m, dd = build(source="binidx", source_data_files=str(tmp_path / "d"), min_token_size=3)
    assert dd["train"]["input_ids"] == [[5, 6, 7, 0], [8, 9, 0]]  # no extra end-of-document token
    assert all(all(x == 1 for x in r) for r in dd["train"]["loss_mask"])
    assert m["dropped"] == {"min_token_size=3": 1}


def test_empty_test_split_loads(build, corpus):
    path, _ = corpus
    _, _, dd = build(source="json", source_data_files=str(path), test_split=0)
    assert len(dd["test"]) == 0 and dd["test"].column_names == ["input_ids", "loss_mask"]


def test_fit_machine_without_the_sources_checks_the_config_only(build, corpus):
    path, _ = corpus
    cfg, _, _ = build(source="json", source_data_files=str(path))
    path.rename(path.with_suffix(".moved"))
    with pytest.warns(UserWarning, match="cannot check the source files"):
        assert data_status(cfg)[0] == "ok"
    assert data_status(DataConfig.from_keys(**{**cfg.to_dict(), "test_split": 1}))[0] == "stale"
