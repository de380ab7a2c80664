"""Adding a device to devices.yaml while keeping the user's comments and layout.

The new entry is written as a block of text: appended at the end of the ``devices``
mapping, or put in place of the old block of the same name. The result is parsed back and
compared with what was meant; where the file's layout defeats the text edit (flow style,
unusual indentation), the whole file is rewritten from its data instead, without comments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .inventory import parse_devices

HEADER = "# qbench device inventory (see `qbench devices`).\ndevices:\n"


def add_device(path: Path, name: str, settings: dict[str, Any]) -> bool:
    """Add device ``name`` to the inventory at ``path``, or replace it; create the file if needed.

    Args:
        path: the devices.yaml to edit.
        name: the device's key.
        settings: its settings, as :class:`qbench.host.inventory.Device` accepts them.

    Returns:
        True if a device of that name was there before (and was replaced).

    Raises:
        UserError: the existing file is not a valid inventory, or ``settings`` are not valid.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML, not edited: {exc}") from exc
    parse_devices(data, str(path))
    devices = dict(data.get("devices") or {})
    existed = name in devices
    devices[name] = settings
    parse_devices({"devices": devices}, f"new entry for {path}")
    edited = _edit_text(text, name, settings)
    if edited is None or (yaml.safe_load(edited) or {}).get("devices") != devices:
        edited = HEADER + _indent(_dump(devices))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(edited, encoding="utf-8")
    tmp.replace(path)
    return existed


def _edit_text(text: str, name: str, settings: dict[str, Any]) -> str | None:
    lines = text.splitlines(keepends=True)
    top = [i for i, line in enumerate(lines) if re.match(r"devices:\s*(#.*)?$", line)]
    if len(top) != 1:
        return None
    entries = [i for i in range(top[0] + 1, len(lines)) if re.match(r"\s+[^\s#]", lines[i])]
    indent = len(lines[entries[0]]) - len(lines[entries[0]].lstrip()) if entries else 2
    block = _indent(_dump({name: settings}), indent)
    start = next((i for i in entries if re.match(rf"{' ' * indent}{re.escape(name)}:\s*(#.*)?$", lines[i])), None)
    if start is None:
        body = "".join(lines)
        return body + ("" if body.endswith("\n") else "\n") + block
    # The block ends at the next line as shallow as its key, comments included: a comment
    # there belongs to what follows.
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent), len(lines))
    return "".join(lines[:start]) + block + "".join(lines[end:])


class _Dumper(yaml.SafeDumper):
    """Block mappings, lists of plain values on one line (``tags: [arm64, emulated]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


def _indent(text: str, width: int = 2) -> str:
    return "".join(" " * width + line if line.strip() else line for line in text.splitlines(keepends=True))
