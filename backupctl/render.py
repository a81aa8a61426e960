"""Human output for backupctl: aligned tables, sizes, times, a progress line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return rows as columns aligned under ``headers`` (``-`` for None)."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


def when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def size(n: int | float | None) -> str | None:
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


class ProgressView:
    """Shows progress events: a redrawn bar on a terminal, plain lines otherwise."""

    WIDTH = 30

    def __init__(self, stream: Any = None, expected: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.expected = expected
        self._last_plain = 0.0
        self._drawn = False

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "log":
            self._clear()
            print(
                f"{when(ev.get('time'))} {ev.get('level', ''):7} {ev.get('step') or '-':10} {ev.get('message')}",
                file=self.stream,
                flush=True,
            )
        elif kind == "progress":
            self._progress(ev)
        elif kind == "status":
            self._clear()
            print(
                f"execution {ev.get('execution_id')} ({ev.get('job')}): {ev.get('status')}",
                file=self.stream,
                flush=True,
            )

    def _progress(self, ev: dict[str, Any]) -> None:
        done = int(ev.get("bytes") or 0)
        total = ev.get("total") or self.expected
        rate = float(ev.get("rate") or 0.0)
        step = ev.get("step") or "-"
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(frac * self.WIDTH)
            eta = duration((total - done) / rate) if rate > 0 and done < total else None
            text = f"{ev.get('job', '')} {step:8} [{bar:<{self.WIDTH}}] {frac * 100:5.1f}% {size(done)} {size(rate)}/s"
            text += f" ETA {eta}" if eta else ""
        else:
            text = f"{ev.get('job', '')} {step:8} {size(done)} {size(rate)}/s"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self._drawn = True
        elif time.monotonic() - self._last_plain >= 2.0:
            self._last_plain = time.monotonic()
            print(text, file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False

    def close(self) -> None:
        self._clear()
