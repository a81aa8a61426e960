"""The part-size schedule for streamed S3 multipart uploads (pure arithmetic, no I/O).

A streamed upload does not know its final size, yet S3 allows at most 10,000 parts of at most
5 GiB each (every part but the last at least 5 MiB). Small parts keep memory low for the
common case; a fixed small size would cap the object at ``initial * max_parts`` (8 MiB x
10,000 ≈ 78 GiB). So the size doubles every ``grow_every`` parts, capped at 5 GiB:

    size(n) = min(initial * 2 ** ((n - 1) // grow_every), MAX_PART)      for n = 1 … max_parts

By default ``grow_every`` is the largest interval for which the ``max_parts`` parts still add
up to 5 TiB (S3's object size limit), so parts stay as small as possible for as long as
possible. With the defaults (8 MiB, 10,000 parts) the size doubles every 1,089 parts, so parts
stay 8 MiB for the first 8.5 GiB of a stream and 16 MiB up to 25.5 GiB.
"""

from __future__ import annotations

from functools import lru_cache

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART = 5 * MiB  # every part but the last
MAX_PART = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * TiB


def _check(initial: int, max_parts: int, grow_every: int) -> None:
    if not MIN_PART <= initial <= MAX_PART:
        raise ValueError(f"initial part size {initial} is outside {MIN_PART}..{MAX_PART}")
    if not 1 <= max_parts <= MAX_PARTS:
        raise ValueError(f"max_parts {max_parts} is outside 1..{MAX_PARTS}")
    if grow_every < 1:
        raise ValueError(f"grow_every {grow_every} must be at least 1")


def _size(part_number: int, initial: int, grow_every: int) -> int:
    # Shift the exponent only as far as needed: beyond MAX_PART the cap applies anyway.
    steps = min((part_number - 1) // grow_every, 40)
    return min(initial << steps, MAX_PART)


@lru_cache(maxsize=256)
def _total(initial: int, max_parts: int, grow_every: int) -> int:
    total = 0
    first = 1
    while first <= max_parts:
        count = min(grow_every, max_parts - first + 1)
        size = _size(first, initial, grow_every)
        if size == MAX_PART:
            # Every later part is capped too: finish in one step instead of looping per tier.
            return total + (max_parts - first + 1) * MAX_PART
        total += count * size
        first += count
    return total


@lru_cache(maxsize=256)
def default_grow_every(initial: int, max_parts: int) -> int:
    """Given the initial part size and the part limit, return the largest doubling interval
    (in parts) whose schedule still reaches 5 TiB, or 1 (fastest growth) if none does;
    raise ValueError if the arguments are outside S3's limits."""
    _check(initial, max_parts, 1)
    if _total(initial, max_parts, 1) < MAX_OBJECT:
        return 1
    # The total shrinks as the interval grows, so the largest good interval is found by bisection.
    lo, hi = 1, max_parts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _total(initial, max_parts, mid) >= MAX_OBJECT:
            lo = mid
        else:
            hi = mid - 1
    return lo


def part_size_for(part_number: int, initial: int, max_parts: int, grow_every: int | None = None) -> int:
    """Given a 1-based part number, the initial part size, the part limit and optionally the
    doubling interval (default :func:`default_grow_every`), return that part's size in bytes;
    raise ValueError if the part number exceeds ``max_parts`` or an argument is out of range."""
    every = grow_every if grow_every is not None else default_grow_every(initial, max_parts)
    _check(initial, max_parts, every)
    if not 1 <= part_number <= max_parts:
        raise ValueError(f"part number {part_number} is outside 1..{max_parts}")
    return _size(part_number, initial, every)


def max_object_size(initial: int, max_parts: int, grow_every: int | None = None) -> int:
    """Given the schedule's parameters, return the largest stream (bytes) it can hold, which
    is the sum of all ``max_parts`` part sizes, but never more than S3's 5 TiB object limit;
    raise ValueError if an argument is out of range."""
    every = grow_every if grow_every is not None else default_grow_every(initial, max_parts)
    _check(initial, max_parts, every)
    return min(_total(initial, max_parts, every), MAX_OBJECT)
