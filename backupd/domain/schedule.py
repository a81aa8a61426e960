"""The schedule calendar: when a cron expression fires, in a time zone, as UTC instants.

Cron fields are wall-clock times in the daemon's time zone (``[daemon].timezone``). Two
days a year that wall clock is not a plain count of minutes, and this module fixes what
happens then:

* **Spring forward** (a wall-clock time that does not exist, e.g. 02:30 on 2026-03-29 in
  Europe/Berlin, when clocks go from 02:00 straight to 03:00): the time fires once, at the
  instant the clocks jump (03:00 CEST, 01:00 UTC). Several skipped times (``*/15`` at 02:00,
  02:15, …) coalesce into that one instant, which is also the 03:00 slot if the expression
  has one. cron(8) does the same for jobs with a fixed hour.
* **Fall back** (a wall-clock time that happens twice, e.g. 02:30 on 2026-10-25): it fires
  once, at its first occurrence (02:30 CEST, 00:30 UTC). Nothing fires in the repeated hour,
  not even for ``*/15 * * * *``, which therefore pauses for that hour. cron(8) runs such
  expressions by the clock instead; a backup schedule is better off with one rule for all.

croniter 7.0 (the version this was checked against) gets the first case the same way but
fires the repeated times of the second case twice when it iterates an aware datetime. So
croniter is used only to walk *naive* wall-clock times (pure calendar arithmetic, no DST),
and each wall-clock time is turned into an instant here. With the rule above that mapping
never goes backwards, so "the first wall-clock time whose instant is after X" is the next
fire time.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

# A guard against a runaway walk; a real walk skips at most the candidates of one repeated
# hour (3600 for a cron with a seconds field).
_MAX_STEPS = 100_000


def _require_aware(name: str, when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, not naive {when.isoformat()}")


def wall_to_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """Given a naive wall-clock time and a zone, return the UTC instant it fires at.

    An ambiguous time (fall back) gives its first occurrence; a time in a spring-forward gap
    gives the instant the gap starts, i.e. when the clocks jump.
    """
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    # In a gap, fold=0 reads the wall time with the offset before the jump and fold=1 with
    # the offset after it; the jump lies between the two readings. zoneinfo does not expose
    # transitions, so find it by bisection over whole seconds (tz data has whole-second times).
    before_offset = first.utcoffset()
    lo = math.floor(wall.replace(tzinfo=tz, fold=1).timestamp())
    hi = math.ceil(instant.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before_offset:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def next_fire(cron: str, tz: ZoneInfo, after: datetime) -> datetime:
    """Given a cron expression, its zone and an aware instant, return the first fire time
    strictly after ``after`` as an aware UTC datetime; raise ValueError if the expression is
    invalid or never fires, or if ``after`` is naive."""
    _require_aware("after", after)
    after_utc = after.astimezone(UTC)
    wall = after_utc.astimezone(tz).replace(tzinfo=None)
    try:
        walk = croniter(cron, wall)
        for _ in range(_MAX_STEPS):
            instant = wall_to_instant(walk.get_next(datetime), tz)
            # Only wall times inside a repeated hour can map to or before `after` here.
            if instant > after_utc:
                return instant
    except CroniterBadDateError:
        raise ValueError(f"cron expression {cron!r} never fires") from None
    raise ValueError(f"cron expression {cron!r}: no fire time found after {after_utc.isoformat()}")


def latest_fire_between(cron: str, tz: ZoneInfo, start: datetime, end: datetime) -> datetime | None:
    """Given a cron expression, its zone and two aware instants, return the most recent fire
    time t with ``start < t <= end`` (aware UTC), or None if there is none; raise ValueError
    if the expression is invalid or an instant is naive."""
    _require_aware("start", start)
    _require_aware("end", end)
    start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
    if end_utc <= start_utc:
        return None
    local_end = end_utc.astimezone(tz)
    wall = local_end.replace(tzinfo=None)
    if local_end.fold:
        # `end` lies in the second pass of a repeated hour: wall times later in that hour
        # already fired (first pass), so the walk must start after the repeated stretch.
        wall += local_end.replace(fold=0).utcoffset() - local_end.utcoffset()
    try:
        walk = croniter(cron, wall + timedelta(minutes=1))
        for _ in range(_MAX_STEPS):
            instant = wall_to_instant(walk.get_prev(datetime), tz)
            if instant <= end_utc:
                # Walking backwards the instants never increase, so the first one at or
                # before `end` is the latest.
                return instant if instant > start_utc else None
    except CroniterBadDateError:
        return None
    raise ValueError(f"cron expression {cron!r}: no fire time found before {end_utc.isoformat()}")


def stable_delay(job: str, max_seconds: float) -> float:
    """Given a job name and a maximum, return a delay in ``[0, max_seconds)`` seconds that is
    the same for that name on every run and every host (0.0 when the maximum is 0); raise
    ValueError if the maximum is negative or not finite.

    It spreads jobs that share a cron time without the fire time wandering between restarts.
    """
    if not math.isfinite(max_seconds) or max_seconds < 0:
        raise ValueError(f"random_delay must be a finite number of seconds >= 0, not {max_seconds!r}")
    if max_seconds == 0:
        return 0.0
    digest = hashlib.sha256(job.encode("utf-8")).digest()
    unit = (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)  # exactly representable, < 1
    delay = unit * max_seconds
    # The product can round up to the maximum itself; the interval is half-open.
    return delay if delay < max_seconds else math.nextafter(max_seconds, 0.0)
