"""Retention: which backups of one group a policy keeps, and why (docs/RETENTION.md).

The caller groups backups (one job, database and destination per group) and hands one
group to :func:`plan_retention`. Every rule is evaluated on its own over the committed
("good"), unlocked backups and the results are joined, so a backup kept by several rules
lists every reason. Periods (hour, day, ISO week, month, year) are calendar periods in the
daemon's time zone, and a period rule counts only periods that hold a backup: after an
outage, ``keep_daily = 7`` still keeps seven daily backups, not the empty last seven days.
``keep_within`` is measured back from the newest good backup, not from now, for the same
reason.

Whatever the policy says, the newest good backup, locked backups and entries that are not
committed backups are never deleted. A plan is only a plan: the caller refuses to apply one
that :attr:`RetentionPlan.exceeds_safety_limit`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

from backupd.config.model import RetentionPolicy
from backupd.domain.durations import parse_duration

REASON_LOCKED = "locked"
REASON_NEWEST = "newest backup"
REASON_NO_RULES = "no retention rules"
REASON_NOT_GOOD = "not a committed backup: ignored"
REASON_DELETE = "no rule keeps it"


@dataclass(frozen=True, slots=True)
class BackupRef:
    """One stored backup as retention sees it.

    ``good`` means committed, successful and with a sidecar; ``created_at`` is the sidecar's
    time (aware).
    """

    key: str
    created_at: datetime
    locked: bool = False
    good: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one backup: keep it or delete it, with the human-readable reasons."""

    key: str
    created_at: datetime
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """Decisions for one group, newest first, and the safety check over them."""

    decisions: list[Decision]
    good_count: int = 0
    max_delete_fraction: float = 0.5

    @property
    def to_delete(self) -> list[Decision]:
        """Return the decisions that delete, newest first."""
        return [d for d in self.decisions if not d.keep]

    @property
    def to_keep(self) -> list[Decision]:
        """Return the decisions that keep, newest first."""
        return [d for d in self.decisions if d.keep]

    @property
    def delete_fraction(self) -> float:
        """Return the share of the group's good backups this plan deletes (0.0 with none)."""
        return len(self.to_delete) / self.good_count if self.good_count else 0.0

    @property
    def exceeds_safety_limit(self) -> bool:
        """Return True if the plan deletes more than ``max_delete_fraction`` of the good backups.

        The limit is compared exactly as written in the config (0.57 means 57/100), so a
        float product like ``0.57 * 100 == 56.99…`` cannot trip it by one.
        """
        limit = Fraction(repr(self.max_delete_fraction)) * self.good_count
        return len(self.to_delete) > limit


# --- periods ---------------------------------------------------------------------------
# Each period function maps a local time to (key, label). Hour keys carry the fold so the
# two 02:00 hours of a fall-back night are two periods.
def _hour(t: datetime) -> tuple[Hashable, str]:
    return (t.date(), t.hour, t.fold), f"{t:%Y-%m-%d %H}:00 {t.tzname()}"


def _day(t: datetime) -> tuple[Hashable, str]:
    return t.date(), f"{t:%Y-%m-%d}"


def _week(t: datetime) -> tuple[Hashable, str]:
    year, week, _ = t.isocalendar()
    return (year, week), f"{year}-W{week:02d}"


def _month(t: datetime) -> tuple[Hashable, str]:
    return (t.year, t.month), f"{t:%Y-%m}"


def _year(t: datetime) -> tuple[Hashable, str]:
    return t.year, f"{t.year}"


_PERIOD_RULES: tuple[tuple[str, Callable[[datetime], tuple[Hashable, str]]], ...] = (
    ("keep_hourly", _hour),
    ("keep_daily", _day),
    ("keep_weekly", _week),
    ("keep_monthly", _month),
    ("keep_yearly", _year),
)
_ALL_RULES = ("keep_last", "keep_within", *(name for name, _ in _PERIOD_RULES))


def _utc(when: datetime, key: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"backup {key!r}: created_at must be aware, not naive {when.isoformat()}")
    return when.astimezone(UTC)


def plan_retention(backups: Iterable[BackupRef], policy: RetentionPolicy, tz: ZoneInfo) -> RetentionPlan:
    """Given the backups of one group, a policy and the zone for period boundaries, decide
    for each backup whether to keep or delete it and return the plan (newest first); raise
    ValueError if a ``created_at`` is naive or ``keep_within`` is not a duration."""
    # Ties on time are broken by key so the same input always yields the same plan.
    refs = sorted(backups, key=lambda b: (_utc(b.created_at, b.key), b.key), reverse=True)
    reasons: list[list[str]] = [[] for _ in refs]
    good = [i for i, b in enumerate(refs) if b.good]
    candidates = [i for i in good if not refs[i].locked]

    for i, b in enumerate(refs):
        if b.locked:
            reasons[i].append(REASON_LOCKED)
    if good:
        reasons[good[0]].append(REASON_NEWEST)

    if all(getattr(policy, name) is None for name in _ALL_RULES):
        for i in candidates:
            reasons[i].append(REASON_NO_RULES)
    else:
        _apply_rules(refs, candidates, good[0] if good else None, policy, tz, reasons)

    decisions: list[Decision] = []
    for i, b in enumerate(refs):
        if not b.good:
            decisions.append(Decision(b.key, b.created_at, True, (*reasons[i], REASON_NOT_GOOD)))
        elif reasons[i]:
            decisions.append(Decision(b.key, b.created_at, True, tuple(reasons[i])))
        else:
            decisions.append(Decision(b.key, b.created_at, False, (REASON_DELETE,)))
    return RetentionPlan(decisions, good_count=len(good), max_delete_fraction=policy.max_delete_fraction)


def _apply_rules(
    refs: list[BackupRef],
    candidates: list[int],
    newest_good: int | None,
    policy: RetentionPolicy,
    tz: ZoneInfo,
    reasons: list[list[str]],
) -> None:
    """Given the sorted backups, the indexes the rules may count (newest first) and the
    newest good one, append each rule's reason to the backups it keeps."""
    if policy.keep_last is not None:
        for rank, i in enumerate(candidates[: policy.keep_last], start=1):
            reasons[i].append(f"keep_last #{rank}")

    if policy.keep_within is not None and newest_good is not None:
        # Anchored on the newest good backup (locked or not), so a long outage does not age
        # every backup out of the window while no new ones arrive.
        cutoff = refs[newest_good].created_at - parse_duration(policy.keep_within)
        for i in candidates:
            if refs[i].created_at >= cutoff:
                reasons[i].append(f"keep_within {policy.keep_within}")

    local = {i: refs[i].created_at.astimezone(tz) for i in candidates}
    for name, period_of in _PERIOD_RULES:
        count = getattr(policy, name)
        if not count:
            continue
        seen: set[Hashable] = set()
        for i in candidates:
            period, label = period_of(local[i])
            if period in seen:
                continue
            # Candidates run newest first, so the first backup met in a period is its newest.
            seen.add(period)
            reasons[i].append(f"{name} #{len(seen)} ({label})")
            if len(seen) == count:
                break
