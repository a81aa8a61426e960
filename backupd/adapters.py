"""What every adapter constructor receives besides its own config section."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AdapterContext:
    """``work_dir`` is a private (0700) directory for short-lived files such as a PGPASSFILE
    or a snapshot; ``state_dir`` is the daemon's state directory."""

    state_dir: Path
    work_dir: Path

    def ensure(self) -> AdapterContext:
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self


def construct(table: Mapping[str, str], name: str, config: Any, ctx: AdapterContext) -> Any:
    """Given a table of ``type`` tag → ``"module:Class"``, build the adapter for ``config``.

    Modules are imported on first use, so a host without, say, MongoDB tools pays nothing
    for that engine.
    """
    tag = str(type(config).__struct_config__.tag)
    module, cls = table[tag].split(":")
    return getattr(importlib.import_module(module), cls)(name, config, ctx)
