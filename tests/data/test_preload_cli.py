"""The preload command line, rwkv/data/preload_cli.py (`preload_datapath.py`, `python -m rwkv preload`): the
config's `data:` section read and checked with file, line and key in each error, command-line overrides,
and the script's one-line error (docs/data.md "Errors")."""

import subprocess
import sys
from pathlib import Path

import pytest

from rwkv.data.preload_cli import load_data_config
from rwkv.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def _yaml(tmp_path, body):
    p = tmp_path / "cfg.yaml"
    head = "# test config\ntrainer:\n  max_steps: 1\nmodel:\n  n_layer: 2\n  whatever: 3\n"
    p.write_text(head + "data:\n" + body)
    return p


def test_config_errors_name_file_line_and_key(tmp_path):
    p = _yaml(tmp_path, "  data_path: out\n  source: json\n  text_rechunk_sise: 10\n")
    with pytest.raises(DataError, match=r"cfg\.yaml, line 10: data\.text_rechunk_sise: unknown key"):
        load_data_config(str(p))
    p = _yaml(tmp_path, "  data_path: out\n  conversation_format: chatml\n")
    with pytest.raises(DataError, match=r"cfg\.yaml, line 9: data\.conversation_format: invalid value"):
        load_data_config(str(p))
    p = _yaml(tmp_path, "  source: json\n")
    with pytest.raises(DataError, match=r"data\.data_path: required key is missing"):
        load_data_config(str(p))
    (tmp_path / "nodata.yaml").write_text("model:\n  n_layer: 2\n")
    with pytest.raises(DataError, match="no data: section"):
        load_data_config(str(tmp_path / "nodata.yaml"))
    (tmp_path / "bad.yaml").write_text("data:\n  data_path: [unclosed\n")
    with pytest.raises(DataError, match=r"bad\.yaml, line \d+: not valid YAML"):
        load_data_config(str(tmp_path / "bad.yaml"))


def test_class_path_init_args_form_is_accepted(tmp_path):
    p = _yaml(tmp_path, "  class_path: rwkv.data.datamodule.RWKVDataModule\n  init_args:\n"
                        "    data_path: out\n    tokenizer: bytes\n")
    cfg = load_data_config(str(p))
    assert cfg.data_path == "out" and cfg.tokenizer == "bytes"


def test_script_prints_one_line_error_without_traceback(tmp_path):
    p = _yaml(tmp_path, f"  data_path: {tmp_path / 'out'}\n  origin:\n    source: json\n"
                        f"    source_data_files: {tmp_path / 'missing.jsonl'}\n")
    proc = subprocess.run([sys.executable, "preload_datapath.py", str(p)], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: data.origin.source_data_files:") and "missing.jsonl" in proc.stderr


def test_command_line_overrides_and_their_errors(tmp_path):
    from rwkv.data.preload_cli import parse_command_line

    p = _yaml(tmp_path, "  data_path: out\n  source: json\n  test_split: 3\n")
    cfg, force = parse_command_line([str(p), "--data.test_split", "5", "--data.data_path", "elsewhere",
                                     "--force"])
    assert (cfg.test_split, cfg.data_path, cfg.source, force) == (5, "elsewhere", "json", True)
    with pytest.raises(DataError, match=r"command line: data\.bogus: unknown key"):
        parse_command_line([str(p), "--data.bogus", "1"])
    with pytest.raises(DataError, match=r"command line: data\.test_split: invalid value 'abc'"):
        parse_command_line([str(p), "--data.test_split", "abc"])
