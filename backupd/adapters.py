"""What every adapter constructor receives besides its own config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AdapterContext:
    """``work_dir`` is a private (0700) directory for short-lived files such as a PGPASSFILE
    or a snapshot; ``state_dir`` is the daemon's state directory."""

    state_dir: Path
    work_dir: Path

    def ensure(self) -> AdapterContext:
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self
