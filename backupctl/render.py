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
    """Shows live events: on a terminal, one redrawn progress bar per running execution with
    log lines scrolling above them; otherwise plain lines (progress at most every 2 s)."""

    WIDTH = 30
    FINAL = frozenset({"succeeded", "partial", "failed", "cancelled", "interrupted"})

    def __init__(self, stream: Any = None, expected: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.expected = expected
        self.rows: dict[Any, str] = {}
        self._drawn = 0
        self._last_plain: dict[Any, float] = {}

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "log":
            job = f"{ev['job']}#{ev.get('execution_id')} " if ev.get("job") else ""
            self._above(
                f"{when(ev.get('time'))} {ev.get('level', ''):7} {job}{ev.get('step') or '-':10} {ev.get('message')}"
            )
        elif kind == "progress":
            self._progress(ev)
        elif kind == "status":
            if ev.get("status") in self.FINAL:
                self.rows.pop(ev.get("execution_id"), None)
            self._above(f"execution {ev.get('execution_id')} ({ev.get('job')}): {ev.get('status')}")

    def bar(self, ev: dict[str, Any]) -> str:
        """Return one progress line: job, step, bar and percentage (when the size is known
        from the last good run), bytes, rate, ETA."""
        done = int(ev.get("bytes") or 0)
        total = ev.get("total") or self.expected
        rate = float(ev.get("rate") or 0.0)
        head = f"{ev.get('job', '')} #{ev.get('execution_id', '')} {ev.get('step') or '-':9}"
        if not done and not total:
            return head.rstrip()
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(frac * self.WIDTH)
            eta = duration((total - done) / rate) if rate > 0 and done < total else None
            text = f"{head} [{bar:<{self.WIDTH}}] {frac * 100:5.1f}% {size(done)} {size(rate)}/s"
            return text + (f" ETA {eta}" if eta else "")
        return f"{head} {size(done)} {size(rate)}/s"

    def _progress(self, ev: dict[str, Any]) -> None:
        key = ev.get("execution_id")
        line = self.bar(ev)
        if self.tty:
            self.rows[key] = line
            self._clear()
            self._draw()
        elif time.monotonic() - self._last_plain.get(key, 0.0) >= 2.0:
            self._last_plain[key] = time.monotonic()
            print(line, file=self.stream, flush=True)

    def _above(self, line: str) -> None:
        self._clear()
        print(line, file=self.stream, flush=True)
        self._draw()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            # up to the first bar's line, then clear to the end of the screen
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self.tty and self.rows:
            self.stream.write("".join(row + "\n" for row in self.rows.values()))
            self.stream.flush()
            self._drawn = len(self.rows)

    def close(self) -> None:
        self._clear()
        self.stream.flush()
