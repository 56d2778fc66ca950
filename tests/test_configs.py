"""Every shipped YAML starts with a comment saying what it is for, and parses against the real CLI schema
(docs/design.md §4, §5.7). Parsing uses `fit --print_config`: types, key names and links are checked,
nothing is instantiated (GPU recipes name files that do not exist here)."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

PARSE_ALL = r"""
import contextlib, io, json, sys, warnings
from rwkv import moved_keys
from rwkv.cli import RWKVCLI
out, moved = {}, {}
for path in sys.argv[1:]:
    buf, err = io.StringIO(), io.StringIO()
    moved_keys._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
                RWKVCLI(args=["fit", "-c", path, "--print_config"])
            out[path] = "no exit"
        except SystemExit as e:
            out[path] = buf.getvalue() if e.code in (0, None) else "ERROR " + err.getvalue()[-1500:]
    moved[path] = [str(w.message) for w in caught if issubclass(w.category, moved_keys.MovedConfigKeyWarning)]
print(json.dumps({"printed": out, "moved": moved}))
"""


@pytest.fixture(scope="module")
def parsed():
    """Every shipped config through `fit --print_config`, in one process: {printed, moved} per path."""
    p = subprocess.run([sys.executable, "-c", PARSE_ALL, *map(str, CONFIGS)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "pretrain-L12-D768-binidx.yaml", "pretrain-L12-D768-hf-text.yaml",
            "continue-pretrain-world.yaml", "finetune-world-chat.yaml", "long-context-finetune.yaml",
            "deepspeed-stage2-multinode.yaml", "deepspeed-stage3-offload.yaml", "tiny.yaml"} <= names


def test_every_config_has_a_header_comment():
    for path in CONFIGS:
        head = path.read_text().splitlines()[:2]
        assert head and head[0].startswith("# ") and len(head[0]) > 30, f"{path}: needs a header comment"


def test_every_config_parses(parsed):
    results = parsed["printed"]
    for path, printed in results.items():
        assert not printed.startswith("ERROR") and printed != "no exit", f"{path}: {printed}"
        cfg = yaml.safe_load(printed)
        assert cfg["model"]["segments"]["ctx_len"] > 0 and cfg["data"]["data_path"], path


def test_configs_use_the_grouped_keys(parsed):
    """Shipped configs show the current layout: no key that moved into a group (rwkv/moved_keys.py), in `model:`
    or in `data:`, where only data_path and the linked keys stay at the top."""
    for path, messages in parsed["moved"].items():
        assert not messages, f"{path}: {messages}"
    from rwkv.cli import MOVED_KEYS
    from rwkv.data.config import GROUPS, TOP_KEYS

    assert set(MOVED_KEYS) == {"model", "data"}
    for path in CONFIGS:
        data = yaml.safe_load(path.read_text())["data"]
        assert set(data) <= {"data_path", *GROUPS}, (path, data)
        assert {k for g in GROUPS for k in data.get(g) or {}} <= set(MOVED_KEYS["data"]) - set(TOP_KEYS), path
