"""FanOutSink: the last stage, writing the stored bytes to every destination at once.

A destination whose writer fails is aborted and dropped while the others go on (the
execution becomes ``partial``); when none is left the stream fails.
"""

from __future__ import annotations

from collections.abc import Callable

from backupd.errors import AllDestinationsFailed
from backupd.storage.base import ObjectWriter


class FanOutSink:
    def __init__(self, writers: dict[str, ObjectWriter], on_failure: Callable[[str, str], None]) -> None:
        self.writers = dict(writers)
        self.failed: dict[str, str] = {}
        self._on_failure = on_failure

    def _drop(self, name: str, reason: str) -> None:
        writer = self.writers.pop(name)
        self.failed[name] = reason
        try:
            writer.abort()
        finally:
            self._on_failure(name, reason)

    def write(self, data: bytes) -> None:
        for name, writer in list(self.writers.items()):
            try:
                writer.write(data)
            except Exception as exc:
                self._drop(name, str(exc))
        if not self.writers:
            raise AllDestinationsFailed(failures="; ".join(self.failed.values()))

    def finish(self) -> None:
        """Nothing to flush: commit is the upload step's, after the dump has been checked."""

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()
