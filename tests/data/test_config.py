"""The typed groups of `data:` (rwkv/data/config.py) and the keys that moved into them (rwkv/moved_keys.py):
every old flat `data.KEY` still works in a YAML file, on the fit command line, with preload_datapath.py and as
a keyword argument, with exactly one warning naming its new place; both spellings give the same config and
the same preload cache key as before the groups existed (docs/design.md §3.6, §4)."""

import json
import subprocess
import sys
import warnings

import pytest
import yaml

from rwkv import moved_keys
from rwkv.data.config import GROUPS, MOVED, TOP_KEYS, DataConfig, FormatConfig, LoaderConfig, OriginConfig, RowsConfig
from rwkv.data.preload import config_hash, data_status, preload
from rwkv.data.preload_cli import load_data_config, parse_command_line
from rwkv.errors import DataError
from rwkv.moved_keys import MovedConfigKeyWarning
from tests.conftest import ROOT
from tests.data.util import write_jsonl

# One non-default value for every moved key; together a valid config (validate() runs on them).
OLD = {
    "source": "binidx", "source_data_files": "data/corpus", "source_data_dir": "data",
    "source_dataset_params": {"name": "x"}, "source_dataset_split": "all", "source_dataset_test_split": "dev",
    "tokenizer": "bytes", "eod_token_id": 5, "custom_text_key": "body", "multi_column_keys": ["q", "a"],
    "multi_column_prefix": ["Q: ", "A: "], "multi_column_suffix": ["", "!"], "multi_column_train_mask": [False, True],
    "multi_column_separator": "|", "disable_prompt_completion_mask": True, "conversation_format": "sender",
    "conversation_key": "turns", "conversation_end_of_conversation": "END",
    "conversation_input_key_prefix_map": {"input": "In: "}, "conversation_input_key_mask": {"input": False},
    "conversation_sender_key": "who", "conversation_sender_value_map": {"u": "User"},
    "conversation_input_key_map": {"message": "{sender}> "}, "conversation_sender_mask": {"u": False},
    "conversation_sender_suffix": {"u": "\n"}, "conversation_role_map": {"user": "Q"},
    "conversation_role_mask": {"user": True},
    "min_token_size": 3, "max_token_size": 900, "text_rechunk_size": 128, "text_rechunk_auto": False,
    "text_rechunk_force": True, "packing_enable": True, "packing_max_len": 256, "packing_in_sequence": True,
    "sort_by_length": True, "sort_asc": False, "test_split": 16, "test_split_shuffle": False, "dataset_offset": 2,
    "dataset_length": 0.5, "seed": 7, "num_proc": 3,
    "auto_preload": True, "reset_state_per_document": False, "shuffle": False, "sampler": "official",
    "sampler_seed": 5, "magic_prime": 11, "epoch_begin": 2, "num_workers": 2,
}
TINY = ROOT / "configs" / "test" / "tiny.yaml"


def grouped_old() -> dict:
    return {g: {k: v for k, v in OLD.items() if MOVED[k] == g} for g in GROUPS}


def test_every_moved_key_is_covered_and_names_are_unique():
    assert set(OLD) == set(MOVED)
    names = [f for cls in GROUPS.values() for f in cls.__dataclass_fields__]
    assert len(names) == len(set(names)) and not set(names) & set(TOP_KEYS)  # a name says where it lives
    assert set(GROUPS) == {"origin", "format", "rows", "loader"}


def test_old_flat_keywords_land_in_their_groups_and_warn_once():
    moved_keys._warned.clear()
    with pytest.warns(MovedConfigKeyWarning) as caught:
        old = DataConfig(data_path="x", micro_batch_size=3, **OLD)
    messages = [str(w.message) for w in caught if w.category is MovedConfigKeyWarning]
    assert sorted(messages) == sorted(moved_keys.moved_message("data", k, g) for k, g in MOVED.items())
    new = DataConfig(data_path="x", micro_batch_size=3, origin=OriginConfig(**grouped_old()["origin"]),
                     format=FormatConfig(**grouped_old()["format"]), rows=RowsConfig(**grouped_old()["rows"]),
                     loader=LoaderConfig(**grouped_old()["loader"]))
    as_dicts = DataConfig(data_path="x", micro_batch_size=3, **grouped_old())  # groups as YAML gives them
    assert old.as_config() == new.as_config() == as_dicts.as_config()
    assert old.to_dict() == new.to_dict() == {"data_path": "x", "micro_batch_size": 3, "ctx_len": 4096, **OLD}
    for key, group in MOVED.items():
        assert getattr(old, key) == getattr(getattr(old, group), key) == OLD[key]  # read by name or by group
    assert DataConfig.from_keys(data_path="x", micro_batch_size=3, **OLD).as_config() == new.as_config()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MovedConfigKeyWarning)  # once per process, not once per use
        DataConfig(data_path="x", tokenizer="bytes")
        DataConfig.from_keys(data_path="x", shuffle=False)  # the by-name constructor never warns
    with pytest.raises(TypeError, match="tokenzier"):
        DataConfig(data_path="x", tokenzier="bytes")


def test_grouped_values_are_read_only():
    cfg = DataConfig.from_keys(data_path="x", tokenizer="bytes")
    with pytest.raises(AttributeError):
        cfg.tokenizer = "world"  # one place holds each value: the (frozen) group
    with pytest.raises(AttributeError):
        cfg.format.tokenizer = "world"


def test_bad_group_key_names_it():
    with pytest.raises(DataError, match=r"data\.format\.tokenzier: unknown key \(did you mean tokenizer\?\)"):
        DataConfig(data_path="x", format={"tokenzier": "bytes"})
    with pytest.raises(DataError, match=r"data\.format\.shuffle: unknown key \(it belongs in data\.loader\.shuffle\)"):
        DataConfig(data_path="x", format={"shuffle": False})


# The pre-groups code (commit 86544d6, rwkv/data/config.py with flat keys and LOADER_KEYS) gave, for this config,
# config_hash 444e7991… and this cache key set: the move must change neither, or every preloaded data_path would
# count as stale.
HASH_KEYS = dict(
    data_path="unused", source="json", source_data_files="corpus.jsonl", source_dataset_params={"name": "x"},
    source_dataset_test_split="test", tokenizer="bytes", eod_token_id=None, custom_text_key="body",
    conversation_format="messages", conversation_role_map={"user": "Q", "assistant": "A"}, min_token_size=3,
    max_token_size=900, packing_enable=True, packing_max_len=256, sort_by_length=True, test_split=16, seed=7,
    dataset_offset=2, num_proc=3, micro_batch_size=4, ctx_len=64, shuffle=False, sampler_seed=5, num_workers=2)
HASH_BEFORE = "444e79914baf6703dc0e9bee20d75cb7b2c247869e083966ac3c9fe04469c07f"
CACHED_BEFORE = """conversation_end_of_conversation conversation_format conversation_input_key_map
conversation_input_key_mask conversation_input_key_prefix_map conversation_key conversation_role_map
conversation_role_mask conversation_sender_key conversation_sender_mask conversation_sender_suffix
conversation_sender_value_map custom_text_key dataset_length dataset_offset disable_prompt_completion_mask
eod_token_id max_token_size min_token_size multi_column_keys multi_column_prefix multi_column_separator
multi_column_suffix multi_column_train_mask packing_enable packing_in_sequence packing_max_len seed sort_asc
sort_by_length source source_dataset_params source_dataset_split source_dataset_test_split test_split
test_split_shuffle text_rechunk_auto text_rechunk_force text_rechunk_size tokenizer""".split()


def test_fingerprint_is_unchanged_by_the_move():
    cfg = DataConfig.from_keys(**HASH_KEYS)
    assert sorted(cfg.cache_config()) == CACHED_BEFORE
    assert config_hash(cfg) == HASH_BEFORE
    moved_keys._warned.clear()
    with pytest.warns(MovedConfigKeyWarning):
        flat = DataConfig(**HASH_KEYS)
    assert config_hash(flat) == HASH_BEFORE
    # loader keys and num_proc stay out of the key, as before
    other = DataConfig.from_keys(**{**HASH_KEYS, "num_proc": 1, "shuffle": True, "num_workers": 0,
                                    "micro_batch_size": 1, "auto_preload": True})
    assert config_hash(other) == HASH_BEFORE


def _cfg_yaml(tmp_path, data: dict, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text("# test\nmodel:\n  n_layer: 1\n" + yaml.safe_dump({"data": data}, sort_keys=False))
    return p


def test_preload_accepts_both_spellings_and_the_data_stays_up_to_date(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i} " + "x" * i} for i in range(20)])
    keys = {"source": "json", "source_data_files": str(corpus), "tokenizer": "bytes", "num_proc": 1,
            "test_split": 2, "packing_enable": True, "packing_max_len": 64}
    data_path = str(tmp_path / "out")
    grouped = _cfg_yaml(tmp_path, {"data_path": data_path, **DataConfig.from_keys(data_path="x", **keys).as_config()
                                   | {"data_path": data_path}}, "grouped.yaml")
    flat = _cfg_yaml(tmp_path, {"data_path": data_path, **keys}, "flat.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MovedConfigKeyWarning)
        new, _ = parse_command_line([str(grouped), "--data.rows.seed", "3"])
    moved_keys._warned.clear()
    with pytest.warns(MovedConfigKeyWarning) as caught:
        old, _ = parse_command_line([str(flat), "--data.seed", "3"])
    assert sorted(str(w.message) for w in caught) == sorted(
        moved_keys.moved_message("data", k, MOVED[k]) for k in [*keys, "seed"])
    assert old.as_config() == new.as_config() and new.seed == 3
    whole, _ = parse_command_line([str(flat), "--data", "{seed: 3}"])
    assert whole.as_config() == new.as_config()
    assert load_data_config(str(flat)).as_config() == load_data_config(str(grouped)).as_config()
    manifest = preload(new, progress=lambda m: None)
    assert data_status(old) == ("ok", manifest)  # built from one spelling, up to date for the other
    assert manifest["key"]["config"] == {k: v for k, v in new.to_dict().items() if k in CACHED_BEFORE
                                         and k not in ("source_data_files", "source_data_dir")}


def test_both_preload_commands_take_both_spellings(tmp_path):
    """`python -m rwkv preload` with the old flat keys builds; `preload_datapath.py` with the grouped keys then
    finds that data_path up to date (a cache hit), and warns about nothing."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i} " + "y" * i} for i in range(12)])
    keys = {"source": "json", "source_data_files": str(corpus), "tokenizer": "bytes", "num_proc": 1}
    data_path = str(tmp_path / "out")
    flat = _cfg_yaml(tmp_path, {"data_path": data_path, **keys}, "flat.yaml")
    grouped = _cfg_yaml(tmp_path, DataConfig.from_keys(data_path=data_path, **keys).as_config(), "grouped.yaml")
    env = {"PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "PATH": ""}

    def run(*args):
        p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stderr

    first = run("-m", "rwkv", "preload", str(flat), "--data.test_split", "2")
    assert "data.test_split is now data.rows.test_split" in first and "building" in first
    second = run("preload_datapath.py", str(grouped), "--data.rows.test_split", "2")
    assert "cache hit" in second and "MovedConfigKeyWarning" not in second


def test_preload_errors_name_the_group_key(tmp_path):
    p = _cfg_yaml(tmp_path, {"data_path": "out", "format": {"tokenzier": "bytes"}})
    with pytest.raises(DataError, match=r"cfg\.yaml, line 7: data\.format\.tokenzier: unknown key"):
        load_data_config(str(p))
    p = _cfg_yaml(tmp_path, {"data_path": "out"})
    with pytest.raises(DataError, match=r"command line: data\.rows\.test_splt: unknown key"):
        parse_command_line([str(p), "--data.rows.test_splt", "3"])
    with pytest.raises(DataError, match=r"command line: data\.rows\.test_split: invalid value 'abc'"):
        parse_command_line([str(p), "--data.rows.test_split", "abc"])


PARSE = r"""
import contextlib, io, json, sys, warnings
import yaml
from rwkv import moved_keys
from rwkv.cli import RWKVCLI

def parse(args):
    moved_keys._warned.clear()
    buf, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
                RWKVCLI(args=["fit", *args, "--print_config"])
        except SystemExit as e:
            if e.code not in (0, None):
                return {"error": err.getvalue()[-2000:]}
    return {"cfg": yaml.safe_load(buf.getvalue()),
            "moved": [str(w.message) for w in caught if issubclass(w.category, moved_keys.MovedConfigKeyWarning)]}

old_yaml, bad_yaml, tiny, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
print(json.dumps({"yaml": parse(["-c", old_yaml]), "argv": parse(["-c", tiny, *argv]),
                  "bad_yaml": parse(["-c", bad_yaml]), "bad_argv": parse(["-c", tiny, "--data.rows.tset_split", "3"]),
                  "micro_batch": parse(["-c", tiny, "--data.micro_batch_size", "3"]),
                  "whole": parse(["-c", tiny, "--data", "{num_proc: 3, tokenizer: world, rows: {seed: 4}}"])}))
"""


def _assert_moved(result, where):
    data = result["cfg"]["data"]
    for key, value in OLD.items():
        group = MOVED[key]
        assert data[group][key] == value, (where, key, data[group])
        assert key not in data, (where, key)
    assert len(result["moved"]) == len(OLD), (where, result["moved"])
    for key, group in MOVED.items():
        hits = [m for m in result["moved"] if m.startswith(f"data.{key} is now data.{group}.{key}")]
        assert len(hits) == 1, (where, key, result["moved"])


def test_old_flat_keys_in_yaml_and_on_the_fit_command_line(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["data"] = {"data_path": cfg["data"]["data_path"], **OLD}
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text(yaml.safe_dump(cfg))
    bad = yaml.safe_load(TINY.read_text())
    bad["data"]["format"]["tokenzier"] = "bytes"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(yaml.safe_dump(bad))
    argv = []
    for key, value in OLD.items():
        text = value if isinstance(value, str) else json.dumps(value)
        argv += [f"--data.{key}={text}"] if key == "tokenizer" else [f"--data.{key}", text]
    p = subprocess.run([sys.executable, "-c", PARSE, str(old_yaml), str(bad_yaml), str(TINY), *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    _assert_moved(out["yaml"], "yaml")
    _assert_moved(out["argv"], "argv")  # the command line wins over the grouped values of tiny.yaml
    assert "tokenzier" in out["bad_yaml"]["error"] and "format" in out["bad_yaml"]["error"]
    assert "--data.rows.tset_split" in out["bad_argv"]["error"]
    whole = out["whole"]  # the whole section as one command-line value
    assert (whole["cfg"]["data"]["rows"]["num_proc"], whole["cfg"]["data"]["rows"]["seed"]) == (3, 4)
    assert whole["cfg"]["data"]["format"]["tokenizer"] == "world" and len(whole["moved"]) == 2
    # one spelling of the micro batch: trainer.microbatch_size, linked into data.micro_batch_size
    assert 'Linked "data.micro_batch_size" must be given via "trainer.microbatch_size"' in out["micro_batch"]["error"]
