"""Durations written by people in config: ``90s``, ``15m``, ``12h``, ``7d``, ``2w``, ``1y``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+)\s*([smhdwy])")


def parse_duration(text: str) -> timedelta:
    """Given ``"1d12h"`` or ``"30d"``, return the timedelta; raise ValueError if malformed."""
    s = text.strip().lower()
    if not s:
        raise ValueError("a duration like '7d' or '12h', not an empty string")
    pos, total = 0, 0
    for m in _PART.finditer(s):
        if m.start() != pos and s[pos : m.start()].strip():
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or total <= 0:
        raise ValueError(f"a duration like '7d', '12h' or '1w2d', not {text!r}")
    return timedelta(seconds=total)
