"""Tests for retention planning: properties over random groups, and fixed calendars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.config.model import RetentionPolicy
from backupd.domain.retention import BackupRef, Decision, RetentionPlan, plan_retention

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ref(when: datetime, key: str | None = None, *, locked: bool = False, good: bool = True) -> BackupRef:
    return BackupRef(key or f"job/job_{when:%Y%m%dT%H%M%SZ}", when, locked=locked, good=good)


def daily(first: datetime, days: int) -> list[BackupRef]:
    return [ref(first + timedelta(days=i)) for i in range(days)]


def by_key(plan: RetentionPlan) -> dict[str, Decision]:
    return {d.key: d for d in plan.decisions}


def kept_times(plan: RetentionPlan) -> list[datetime]:
    return [d.created_at for d in plan.decisions if d.keep]


# --- properties -------------------------------------------------------------------------
ZONES = [UTC_ZONE, BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]
COUNT = st.none() | st.integers(min_value=0, max_value=6)
COUNTED_RULES = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]


@st.composite
def groups(draw: st.DrawFn) -> list[BackupRef]:
    # Times cluster so that hours, days and weeks hold several backups, and straddle DST days.
    base = draw(st.sampled_from([utc(2026, 3, 27), utc(2026, 10, 23), utc(2026, 12, 26), utc(2028, 2, 26)]))
    spread = draw(
        st.sampled_from([timedelta(hours=6), timedelta(days=4), timedelta(days=60), timedelta(days=800)])
    )
    offsets = draw(st.lists(st.floats(min_value=0, max_value=1), max_size=40))
    flags = draw(
        st.lists(st.tuples(st.booleans(), st.booleans()), min_size=len(offsets), max_size=len(offsets))
    )
    return [
        BackupRef(f"k{i:03d}", base + spread * off, locked=locked and i % 3 == 0, good=good or i % 4 != 0)
        for i, (off, (locked, good)) in enumerate(zip(offsets, flags, strict=True))
    ]


POLICIES = st.builds(
    RetentionPolicy,
    keep_last=COUNT,
    keep_within=st.none() | st.sampled_from(["1h", "1d", "7d", "30d"]),
    keep_hourly=COUNT,
    keep_daily=COUNT,
    keep_weekly=COUNT,
    keep_monthly=COUNT,
    keep_yearly=COUNT,
    max_delete_fraction=st.floats(min_value=0, max_value=1),
)


@pytest.mark.timeout(60)
@settings(max_examples=400, deadline=None)
@given(backups=groups(), policy=POLICIES, tz=st.sampled_from(ZONES))
def test_plan_invariants(backups: list[BackupRef], policy: RetentionPolicy, tz: ZoneInfo) -> None:
    plan = plan_retention(backups, policy, tz)
    refs = {b.key: b for b in backups}

    # every input appears exactly once, newest first
    assert sorted(d.key for d in plan.decisions) == sorted(refs)
    times = [d.created_at for d in plan.decisions]
    assert times == sorted(times, reverse=True)
    kept = {d.key for d in plan.decisions if d.keep}
    deleted = {d.key for d in plan.to_delete}
    assert kept | deleted == set(refs) and not kept & deleted

    # never deleted: locked, not committed, the newest good backup
    assert all(not refs[k].locked and refs[k].good for k in deleted)
    good = [b for b in backups if b.good]
    if good:
        newest = max(good, key=lambda b: (b.created_at, b.key))
        assert newest.key in kept
        assert "newest backup" in by_key(plan)[newest.key].reasons

    # reasons are never empty; a deletion says why
    assert all(d.reasons for d in plan.decisions)
    assert all(d.reasons == ("no rule keeps it",) for d in plan.to_delete)
    assert plan.good_count == len(good)

    # idempotence: planning again on the survivors deletes nothing more
    survivors = [refs[k] for k in kept]
    again = plan_retention(survivors, policy, tz)
    assert again.to_delete == []


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(backups=groups(), policy=POLICIES, tz=st.sampled_from(ZONES), rule=st.sampled_from(COUNTED_RULES))
def test_raising_a_count_never_deletes_more(
    backups: list[BackupRef], policy: RetentionPolicy, tz: ZoneInfo, rule: str
) -> None:
    # From an unset rule start at 0, so both policies have rules (an empty policy keeps all).
    kwargs = {name: getattr(policy, name) for name in policy.__struct_fields__}
    kwargs[rule] = kwargs[rule] or 0
    before = {d.key for d in plan_retention(backups, RetentionPolicy(**kwargs), tz).to_delete}
    kwargs[rule] += 1
    after = {d.key for d in plan_retention(backups, RetentionPolicy(**kwargs), tz).to_delete}
    assert after <= before


@pytest.mark.timeout(30)
@given(backups=groups(), tz=st.sampled_from(ZONES))
def test_empty_policy_keeps_everything(backups: list[BackupRef], tz: ZoneInfo) -> None:
    plan = plan_retention(backups, RetentionPolicy(), tz)
    assert plan.to_delete == []
    for d, b in zip(
        plan.decisions, sorted(backups, key=lambda b: (b.created_at, b.key), reverse=True), strict=True
    ):
        if b.good and not b.locked:
            assert "no retention rules" in d.reasons


# --- rules and reasons ------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_reason_strings_and_joined_rules() -> None:
    backups = daily(utc(2026, 11, 20, 12), 11)  # Nov 20 .. Nov 30
    policy = RetentionPolicy(
        keep_last=2, keep_within="3d", keep_daily=4, keep_weekly=2, max_delete_fraction=1
    )
    plan = plan_retention(backups, policy, UTC_ZONE)
    reasons = {d.created_at.day: d.reasons for d in plan.decisions}
    assert reasons[30] == (
        "newest backup",
        "keep_last #1",
        "keep_within 3d",
        "keep_daily #1 (2026-11-30)",
        "keep_weekly #1 (2026-W49)",
    )
    assert reasons[29] == (
        "keep_last #2",
        "keep_within 3d",
        "keep_daily #2 (2026-11-29)",
        "keep_weekly #2 (2026-W48)",
    )
    assert reasons[28] == ("keep_within 3d", "keep_daily #3 (2026-11-28)")
    # keep_within is inclusive: exactly 3 days before the newest
    assert reasons[27] == ("keep_within 3d", "keep_daily #4 (2026-11-27)")
    assert reasons[26] == ("no rule keeps it",)
    assert [d.created_at.day for d in plan.to_delete] == [26, 25, 24, 23, 22, 21, 20]


@pytest.mark.timeout(10)
def test_locked_backups_are_kept_and_not_counted() -> None:
    a, b, c, d = (ref(utc(2026, 5, day)) for day in (4, 3, 2, 1))
    a = BackupRef(a.key, a.created_at, locked=True)
    d = BackupRef(d.key, d.created_at, locked=True)
    plan = plan_retention([d, c, b, a], RetentionPolicy(keep_last=1), UTC_ZONE)
    got = by_key(plan)
    assert got[a.key].reasons == ("locked", "newest backup")
    assert got[b.key].reasons == ("keep_last #1",)  # the locked newest did not use the slot
    assert not got[c.key].keep
    assert got[d.key].reasons == ("locked",)


@pytest.mark.timeout(10)
def test_non_good_entries_are_ignored_never_deleted_never_counted() -> None:
    broken = ref(utc(2026, 5, 5), good=False)
    older = daily(utc(2026, 5, 1), 4)  # May 1 .. May 4
    plan = plan_retention([broken, *older], RetentionPolicy(keep_last=1, max_delete_fraction=1), UTC_ZONE)
    got = by_key(plan)
    assert got[broken.key].keep and got[broken.key].reasons == ("not a committed backup: ignored",)
    assert got[older[3].key].reasons == ("newest backup", "keep_last #1")
    assert len(plan.to_delete) == 3
    assert plan.good_count == 4


@pytest.mark.timeout(10)
def test_zero_counts_keep_nothing_but_the_newest() -> None:
    backups = daily(utc(2026, 5, 1), 5)
    zero = RetentionPolicy(keep_last=0, keep_daily=0, keep_yearly=0, max_delete_fraction=1)
    plan = plan_retention(backups, zero, UTC_ZONE)
    assert kept_times(plan) == [utc(2026, 5, 5)]
    assert plan.decisions[0].reasons == ("newest backup",)
    # a zero rule next to a real one changes nothing
    mixed = plan_retention(
        backups, RetentionPolicy(keep_last=0, keep_daily=2, max_delete_fraction=1), UTC_ZONE
    )
    assert kept_times(mixed) == [utc(2026, 5, 5), utc(2026, 5, 4)]


@pytest.mark.timeout(10)
def test_empty_policy_and_empty_group() -> None:
    backups = daily(utc(2026, 5, 1), 3)
    plan = plan_retention(backups, RetentionPolicy(), UTC_ZONE)
    assert [d.reasons for d in plan.decisions] == [
        ("newest backup", "no retention rules"),
        ("no retention rules",),
        ("no retention rules",),
    ]
    empty = plan_retention([], RetentionPolicy(keep_last=1), UTC_ZONE)
    assert empty.decisions == [] and empty.delete_fraction == 0.0 and not empty.exceeds_safety_limit


@pytest.mark.timeout(10)
def test_naive_created_at_is_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        plan_retention([BackupRef("k", datetime(2026, 1, 1))], RetentionPolicy(keep_last=1), UTC_ZONE)


# --- safety limit -----------------------------------------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("count", "keep_last", "fraction", "exceeds"),
    [
        (10, 5, 0.5, False),  # deletes 5 of 10: at the limit, not over it
        (10, 4, 0.5, True),  # deletes 6 of 10
        (10, 10, 0.0, False),
        (10, 9, 0.0, True),
        (100, 43, 0.57, False),  # 57 of 100; 0.57 * 100 is 56.99999999999999 as a float
        (100, 42, 0.57, True),
        (3, 1, 1.0, False),
    ],
)
def test_exceeds_safety_limit(count: int, keep_last: int, fraction: float, exceeds: bool) -> None:
    backups = daily(utc(2026, 1, 1), count)
    plan = plan_retention(
        backups, RetentionPolicy(keep_last=keep_last, max_delete_fraction=fraction), UTC_ZONE
    )
    assert len(plan.to_delete) == count - keep_last
    assert plan.delete_fraction == pytest.approx((count - keep_last) / count)
    assert plan.exceeds_safety_limit is exceeds


@pytest.mark.timeout(10)
def test_safety_limit_counts_locked_but_not_broken_backups() -> None:
    backups = daily(utc(2026, 1, 1), 4)  # Jan 1 .. Jan 4
    backups[0] = BackupRef(backups[0].key, backups[0].created_at, locked=True)
    backups.append(ref(utc(2026, 1, 9), good=False))
    plan = plan_retention(backups, RetentionPolicy(keep_last=1, max_delete_fraction=0.5), UTC_ZONE)
    assert plan.good_count == 4
    assert len(plan.to_delete) == 2  # Jan 2 and Jan 3
    assert plan.delete_fraction == 0.5
    assert not plan.exceeds_safety_limit


# --- calendars ------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_days_are_local_days_across_spring_forward() -> None:
    backups = [
        ref(utc(2026, 3, 28, 22, 30)),  # 23:30 CET, Mar 28
        ref(utc(2026, 3, 29, 21, 30)),  # 23:30 CEST, Mar 29 (a 23-hour day)
        ref(utc(2026, 3, 29, 22, 30)),  # 00:30 CEST, Mar 30
    ]
    plan = plan_retention(backups, RetentionPolicy(keep_daily=3), BERLIN)
    assert plan.to_delete == []
    assert [d.reasons[-1] for d in plan.decisions] == [
        "keep_daily #1 (2026-03-30)",
        "keep_daily #2 (2026-03-29)",
        "keep_daily #3 (2026-03-28)",
    ]
    # The same backups counted in UTC days share Mar 29 and lose one.
    assert len(plan_retention(backups, RetentionPolicy(keep_daily=3), UTC_ZONE).to_delete) == 1


@pytest.mark.timeout(10)
def test_days_and_hours_across_fall_back() -> None:
    first_0215 = ref(utc(2026, 10, 25, 0, 15))  # 02:15 CEST
    second_0215 = ref(utc(2026, 10, 25, 1, 15))  # 02:15 CET, one hour later
    plan = plan_retention([first_0215, second_0215], RetentionPolicy(keep_hourly=2), BERLIN)
    assert [d.reasons[-1] for d in plan.decisions] == [
        "keep_hourly #1 (2026-10-25 02:00 CET)",
        "keep_hourly #2 (2026-10-25 02:00 CEST)",
    ]

    # The 25-hour day of Oct 25 runs from 22:00 UTC on the 24th to 23:00 UTC on the 25th.
    early = ref(utc(2026, 10, 24, 22, 30))  # 00:30 CEST, Oct 25
    late = ref(utc(2026, 10, 25, 22, 30))  # 23:30 CET, Oct 25
    before = ref(utc(2026, 10, 24, 21, 30))  # 23:30 CEST, Oct 24
    after = ref(utc(2026, 10, 25, 23, 30))  # 00:30 CET, Oct 26
    plan = plan_retention(
        [before, early, late, after], RetentionPolicy(keep_daily=3, max_delete_fraction=1), BERLIN
    )
    assert [d.key for d in plan.to_delete] == [early.key]
    assert by_key(plan)[late.key].reasons == ("keep_daily #2 (2026-10-25)",)


@pytest.mark.timeout(10)
def test_month_ends_follow_the_zone() -> None:
    jan_local = ref(utc(2026, 1, 31, 22, 30))  # 23:30 CET Jan 31
    feb_local = ref(utc(2026, 1, 31, 23, 30))  # 00:30 CET Feb 1
    feb_end = ref(utc(2026, 2, 28, 22, 59))  # 23:59 CET Feb 28
    mar_first = ref(utc(2026, 2, 28, 23, 0))  # 00:00 CET Mar 1
    policy = RetentionPolicy(keep_monthly=3, max_delete_fraction=1)
    plan = plan_retention([jan_local, feb_local, feb_end, mar_first], policy, BERLIN)
    assert [d.key for d in plan.to_delete] == [feb_local.key]
    assert by_key(plan)[feb_end.key].reasons == ("keep_monthly #2 (2026-02)",)
    assert by_key(plan)[jan_local.key].reasons == ("keep_monthly #3 (2026-01)",)
    # In UTC all four fall in January and February: each month keeps its last one only.
    plan_utc = plan_retention([jan_local, feb_local, feb_end, mar_first], policy, UTC_ZONE)
    assert [d.key for d in plan_utc.to_delete] == [feb_end.key, jan_local.key]


@pytest.mark.timeout(10)
def test_leap_day() -> None:
    backups = [*daily(utc(2028, 2, 27, 12), 4), ref(utc(2028, 2, 29, 6))]  # Feb 27, 28, 29, Mar 1
    plan = plan_retention(
        backups, RetentionPolicy(keep_daily=4, keep_monthly=2, max_delete_fraction=1), BERLIN
    )
    got = by_key(plan)
    assert [d.created_at for d in plan.to_delete] == [utc(2028, 2, 29, 6)]
    assert got[ref(utc(2028, 2, 29, 12)).key].reasons == (
        "keep_daily #2 (2028-02-29)",
        "keep_monthly #2 (2028-02)",
    )
    assert got[ref(utc(2028, 2, 27, 12)).key].reasons == ("keep_daily #4 (2028-02-27)",)


@pytest.mark.timeout(10)
def test_iso_weeks_across_the_year_boundary() -> None:
    backups = daily(utc(2026, 12, 27, 12), 9)  # Sun Dec 27 2026 .. Mon Jan 4 2027
    plan = plan_retention(
        backups, RetentionPolicy(keep_weekly=3, keep_yearly=2, max_delete_fraction=1), BERLIN
    )
    got = {d.created_at.date().isoformat(): d.reasons for d in plan.decisions if d.keep}
    # Dec 28 2026 .. Jan 3 2027 is one week, 2026-W53; the calendar year still changes on Jan 1.
    assert got == {
        "2027-01-04": ("newest backup", "keep_weekly #1 (2027-W01)", "keep_yearly #1 (2027)"),
        "2027-01-03": ("keep_weekly #2 (2026-W53)",),
        "2026-12-31": ("keep_yearly #2 (2026)",),
        "2026-12-27": ("keep_weekly #3 (2026-W52)",),
    }


@pytest.mark.timeout(10)
def test_long_outage_keeps_pre_outage_history() -> None:
    before = daily(utc(2026, 1, 1, 2, 30), 90)  # Jan 1 .. Mar 31
    after = daily(utc(2026, 5, 31, 2, 30), 10)  # May 31 .. Jun 9, after 60 days without backups
    policy = RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=6, max_delete_fraction=1)
    plan = plan_retention(before + after, policy, BERLIN)
    kept = {d.created_at.date().isoformat(): d.reasons for d in plan.decisions if d.keep}

    daily_kept = sorted(
        day for day, reasons in kept.items() if any(r.startswith("keep_daily") for r in reasons)
    )
    assert daily_kept == [f"2026-06-{d:02d}" for d in range(3, 10)]  # the seven newest
    # weekly: the 4 newest weeks that hold a backup, so the empty weeks of the outage do not count
    assert kept["2026-03-31"] == ("keep_weekly #4 (2026-W14)", "keep_monthly #3 (2026-03)")
    assert kept["2026-02-28"] == ("keep_monthly #4 (2026-02)",)
    assert kept["2026-01-31"] == ("keep_monthly #5 (2026-01)",)
    assert kept["2026-05-31"] == ("keep_weekly #3 (2026-W22)", "keep_monthly #2 (2026-05)")
    assert len(kept) == 7 + 1 + 3  # seven days, May 31, three months from before the outage


@pytest.mark.timeout(10)
def test_keep_within_is_measured_from_the_newest_backup_not_now() -> None:
    # Backups stopped on Mar 31; the plan is made 60 days later. Nothing in the plan looks at
    # the clock, so the last 30 days of backups are kept however long ago they were taken.
    backups = daily(utc(2026, 1, 1, 2, 30), 90)
    plan = plan_retention(backups, RetentionPolicy(keep_within="30d", max_delete_fraction=1), BERLIN)
    kept = kept_times(plan)
    assert kept[0] == utc(2026, 3, 31, 2, 30) and kept[-1] == utc(2026, 3, 1, 2, 30)
    assert len(kept) == 31

    # When backups resume, the window follows the newest one and the outage ages out the old ones.
    resumed = backups + daily(utc(2026, 5, 31, 2, 30), 10)
    plan = plan_retention(resumed, RetentionPolicy(keep_within="30d", max_delete_fraction=1), BERLIN)
    assert kept_times(plan) == [d.created_at for d in reversed(resumed[-10:])]
