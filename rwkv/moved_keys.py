"""Config keys that moved into a group: the old flat spelling keeps working, with one warning naming the new
place (docs/design.md §4).

A section's table maps each old key to its group, e.g. {"lr_init": "optimizer"} for `model:`, so
`model.lr_init` becomes `model.optimizer.lr_init`. `regroup` rewrites a section's dict (what a YAML file
or a caller's keyword arguments hold); `regroup_argv` rewrites `--section.key` items of a command line.
Only the key's position changes, never its value. Imports nothing from the rest of the package, so the
data side (which must not import training) and the CLI share it.
"""

from __future__ import annotations

import warnings
from typing import Any


class MovedConfigKeyWarning(FutureWarning):
    """An old flat config key was used. A FutureWarning, because Python shows those to users by default
    (a DeprecationWarning is hidden outside `__main__`)."""


_warned: set[str] = set()


def moved_message(section: str, key: str, group: str) -> str:
    return f"{section}.{key} is now {section}.{group}.{key} (the old spelling still works, for now)"


def warn_moved(section: str, key: str, group: str) -> None:
    """One warning per old key and process, however often the key is read."""
    name = f"{section}.{key}"
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(moved_message(section, key, group), MovedConfigKeyWarning, stacklevel=3)


def regroup(section: str, values: dict[str, Any], moved: dict[str, str]) -> dict[str, Any]:
    """`values` (one section's keys) with every old flat key moved into its group's dict. A group may already
    be there as a dict or as an object with attributes (a dataclass); the flat value wins, since it is the
    one the user stated last (for example a command-line override of a grouped YAML)."""
    if not any(k in moved for k in values):
        return values
    out = dict(values)
    for key in [k for k in values if k in moved]:
        group = moved[key]
        warn_moved(section, key, group)
        current = out.get(group)
        if current is not None and not isinstance(current, dict):
            current = {f: getattr(current, f) for f in current.__dataclass_fields__}
        out[group] = {**(current or {}), key: out.pop(key)}
    return out


def regroup_argv(argv: list[str], section: str, moved: dict[str, str]) -> list[str]:
    """`--section.key VALUE` / `--section.key=VALUE` items of old keys spelled with their group, and a whole
    section given as a mapping (`--section '{key: VALUE}'`, `--section={...}`) with its old keys regrouped."""
    out = []
    whole = False  # the previous item was `--section`: this one is the section's value
    for a in argv:
        name, eq, value = a.partition("=")
        prefix = f"--{section}."
        key = name[len(prefix):] if name.startswith(prefix) else None
        if whole:
            a, whole = _regroup_text(a, section, moved), False
        elif a == f"--{section}":
            whole = True
        elif name == f"--{section}" and eq:
            a = f"{name}={_regroup_text(value, section, moved)}"
        elif key in moved:
            warn_moved(section, key, moved[key])
            a = f"{prefix}{moved[key]}.{key}{eq}{value}"
        out.append(a)
    return out


def _regroup_text(text: str, section: str, moved: dict[str, str]) -> str:
    """A section's value from the command line: a YAML mapping with old keys comes back regrouped (as YAML);
    anything else (a file name, a mapping without old keys) unchanged."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(value, dict) or not any(k in moved for k in value):
        return text
    return yaml.safe_dump(regroup(section, value, moved), default_flow_style=True, width=1 << 30).strip()
