"""The `models:` entry the tools print for a model they wrote, ready to paste into a config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


def model_entry(path: Path, sha256: str, name: str | None = None, **extra: Any) -> dict:
    """name (default: the file's stem, made a valid model name), absolute path, pinned digest."""
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "model"
    return {"name": name, "path": str(path.resolve()), "sha256": sha256, **extra}


class _Dumper(yaml.SafeDumper):
    """Block mappings, lists inline (`resize: [64, 64]`), no line wrapping."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def entry_text(entry: dict) -> str:
    """The entry as YAML, indented as an item under `models:`."""
    text = yaml.dump(entry, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    first, *rest = text.rstrip().splitlines()
    return "\n".join(["  - " + first, *("    " + line for line in rest)])
