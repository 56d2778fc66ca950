"""`python preload_datapath.py cfg.yaml [--force] [--data.KEY VALUE ...]`: the `data:` section of
the fit config -> data on disk.

Reads only `data:` (the model/trainer/optimizer sections of the same YAML are ignored), applies
command-line overrides as LightningCLI would, validates against the `DataConfig` signature with
jsonargparse (the very signature LightningCLI uses for `RWKVDataModule`), and runs the preload.
No Lightning import: a cache hit returns in well under 2 s. Keys that moved into a group (`data.format.tokenizer`,
now `data.format.tokenizer`) are accepted in their old place, in the file and on the command line, with
one warning each, as by the fit CLI (rwkv/moved_keys.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import DataError
from ..moved_keys import regroup, regroup_argv
from .config import MOVED, DataConfig


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each key under data: (also data.init_args:), for error messages."""
    import yaml

    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, prefix: str):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines.setdefault(key, k.start_mark.line + 1)
                walk(v, key + ".")

    walk(root, "")
    return lines


def data_section(path: str) -> tuple[dict, dict[str, int], str]:
    """(data dict as the file states it, key -> line, prefix of the data keys in the file) from a LightningCLI
    YAML. Old flat keys are still in their old place here: `_regrouped` moves them."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read config {path}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise DataError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with a data: section")
    prefix = "data"
    if "data" not in doc and isinstance(doc.get("fit"), dict):
        doc, prefix = doc["fit"], "fit.data"
    data = doc.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{path}: no data: section (preload_datapath.py builds what data: describes)")
    if "init_args" in data or "class_path" in data:
        data, prefix = data.get("init_args") or {}, prefix + ".init_args"
    if not isinstance(data, dict):
        raise DataError(f"{path}: {prefix} must be a mapping of data keys")
    return data, _key_lines(text), prefix


def _regrouped(data: dict, flat: set[str]) -> dict:
    """`data` with old flat keys moved into their groups (one warning each); their names go into `flat`."""
    flat.update(k for k in data if k in MOVED)
    return regroup("data", data, MOVED)


def _as_written(key: str, flat: set[str]) -> str:
    """An error's key as the user wrote it: `conversation_format` for `format.conversation_format` when the
    config or command line used the old flat place, so that the message matches the text it points at."""
    group, _, name = key.rpartition(".")
    return name if group and MOVED.get(name) == group and name in flat else key


def _explain(msg: str) -> tuple[str | None, str]:
    """(key, short reason) from a jsonargparse error."""
    m = (re.search(r"does not accept option '([^']+)'", msg)
         or re.search(r"unrecognized arguments: --data\.(\S+)", msg))
    if m:
        return m.group(1), "unknown key (see docs/data.md for the data keys; check the spelling)"
    m = re.search(r'key "data\.([\w.]+)"', msg)
    if m:
        given = re.search(r"Given value: (.*)", msg)
        subtypes = re.search(r"Subtypes: (.*)", msg)
        expected = re.search(r"- (Expected .*)", msg)
        reason = f"invalid value {given.group(1).strip()!r}" if given else "invalid value"
        if subtypes:
            reason += f"; allowed types: {subtypes.group(1).strip()}"
        elif expected:
            reason += f"; {expected.group(1).strip()}"
        return m.group(1), reason
    m = re.search(r"required: data\.(\w+)", msg)
    if m:
        return m.group(1), "required key is missing"
    return None, msg.splitlines()[0] if msg else "invalid data section"


def load_data_config(path: str) -> DataConfig:
    """Validate the data: section of `path` against the DataConfig/RWKVDataModule signature."""
    from jsonargparse import ArgumentParser

    data, lines, prefix = data_section(path)
    flat: set[str] = set()
    data = _regrouped(data, flat)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DataConfig, "data")
    try:
        ns = parser.parse_object({"data": data})
    except Exception as e:  # jsonargparse.ArgumentError and friends
        key, reason = _explain(str(e))
        if key is None:
            raise DataError(f"{path}: {prefix}: {reason}") from None
        key = _as_written(key, flat)
        line = lines.get(f"{prefix}.{key}")
        where = f"{path}, line {line}" if line else path
        raise DataError(f"{where}: {prefix}.{key}: {reason}") from None
    kwargs = ns.data.as_dict() if hasattr(ns.data, "as_dict") else dict(vars(ns.data))
    try:
        return DataConfig(**kwargs)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _script_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="preload_datapath.py", exit_on_error=False,
        description="Tokenize the data: section of a fit config into data.data_path (cache hit: no-op). "
                    "Usage: preload_datapath.py CONFIG.yaml [--force] [--data.KEY VALUE ...]",
    )
    parser.add_argument("config", help="the YAML used with `lightning_trainer.py fit -c` (first argument)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache matches")
    parser.add_class_arguments(DataConfig, "data")
    return parser


def parse_command_line(argv: list[str]) -> tuple[DataConfig, bool]:
    """`CONFIG.yaml [--force] [--data.KEY VALUE ...]`: the YAML's data: section, then overrides (as
    with LightningCLI) validated by the same signature."""
    import yaml

    parser = _script_parser()
    from_file = bool(argv) and not argv[0].startswith("-")
    flat: set[str] = set()
    given = [a.partition("=")[0][len("--data."):] for a in argv if a.startswith("--data.")]
    flat.update(k for k in given if k in MOVED)
    argv = regroup_argv(argv, "data", MOVED)
    if from_file:
        data, _, _ = data_section(argv[0])
        argv = ["--data", yaml.safe_dump(_regrouped(data, set()))] + argv
    try:
        ns = parser.parse_args(argv)
    except Exception as e:  # jsonargparse.ArgumentError
        if from_file:
            load_data_config(argv[2])  # a problem in the file: report it with its file and line
        key, reason = _explain(str(e))
        if key is None:
            raise DataError(f"command line: {reason}") from None
        raise DataError(f"command line: data.{_as_written(key, flat)}: {reason}") from None
    try:
        return DataConfig(**ns.data.as_dict()), bool(ns.force)
    except DataError as e:
        raise DataError(f"{ns.config}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from .preload import preload

        cfg, force = parse_command_line(argv)
        preload(cfg, force=force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written to data_path", file=sys.stderr)
        return 130
    return 0
