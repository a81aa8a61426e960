"""Tests for the cron calendar: fire times in a zone, DST days, catch-up windows, stable delays."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.domain.schedule import latest_fire_between, next_fire, stable_delay, wall_to_instant

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # shifts by 30 minutes


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(cron: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    for _ in range(count):
        after = next_fire(cron, tz, after)
        out.append(after)
    return out


# --- next_fire --------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_next_fire_is_strictly_after_and_utc() -> None:
    assert next_fire("30 2 * * *", ZoneInfo("UTC"), utc(2026, 1, 1)) == utc(2026, 1, 1, 2, 30)
    nxt = next_fire("30 2 * * *", ZoneInfo("UTC"), utc(2026, 1, 1, 2, 30))
    assert nxt == utc(2026, 1, 2, 2, 30)
    assert nxt.tzinfo is UTC


@pytest.mark.timeout(10)
def test_cron_fields_are_wall_clock_in_the_zone() -> None:
    # 02:30 in Berlin is 01:30 UTC in winter and 00:30 UTC in summer.
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 1, 10)) == utc(2026, 1, 10, 1, 30)
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 7, 10)) == utc(2026, 7, 10, 0, 30)
    # An `after` given in another zone means the same instant.
    after = datetime(2026, 1, 10, 3, 0, tzinfo=NEW_YORK)  # 08:00 UTC
    assert next_fire("0 9 * * *", ZoneInfo("UTC"), after) == utc(2026, 1, 10, 9)


@pytest.mark.timeout(10)
def test_spring_forward_nonexistent_time_fires_once_when_clocks_jump() -> None:
    # 2026-03-29 in Berlin: 02:00 CET -> 03:00 CEST at 01:00 UTC; 02:30 does not exist.
    assert fires("30 2 * * *", BERLIN, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]


@pytest.mark.timeout(10)
def test_spring_forward_skipped_slots_coalesce_into_one_fire() -> None:
    got = fires("*/30 * * * *", BERLIN, utc(2026, 3, 29, 0, 0), 3)
    # 01:30 CET, then 02:00, 02:30 (skipped) and 03:00 CEST all at 01:00 UTC, then 03:30 CEST.
    assert got == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30)]


@pytest.mark.timeout(10)
def test_fall_back_repeated_time_fires_once_at_first_occurrence() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST -> 02:00 CET at 01:00 UTC; 02:30 happens twice.
    assert fires("30 2 * * *", BERLIN, utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]
    # Starting inside the second pass of the repeated hour does not fire it again either.
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


@pytest.mark.timeout(10)
def test_fall_back_repeated_hour_does_not_fire_for_frequent_expressions() -> None:
    got = fires("*/30 * * * *", BERLIN, utc(2026, 10, 25, 0, 0), 3)
    # 02:30 CEST, then 03:00 CET: the second 02:00 and 02:30 are skipped.
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2, 0), utc(2026, 10, 25, 2, 30)]


@pytest.mark.timeout(10)
def test_half_hour_dst_shift() -> None:
    # Lord Howe Island, 2026-10-04: 02:00 +10:30 -> 02:30 +11:00 (15:30 UTC on the 3rd).
    assert next_fire("15 2 * * *", LORD_HOWE, utc(2026, 10, 3, 12)) == utc(2026, 10, 3, 15, 30)
    assert wall_to_instant(datetime(2026, 10, 4, 2, 15), LORD_HOWE) == utc(2026, 10, 3, 15, 30)


@pytest.mark.timeout(10)
def test_a_whole_skipped_day_maps_to_the_jump() -> None:
    # Samoa skipped 2011-12-30 entirely; anything on that date fires at the jump.
    assert wall_to_instant(datetime(2011, 12, 30, 12, 0), ZoneInfo("Pacific/Apia")) == utc(2011, 12, 30, 10)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, LORD_HOWE], ids=str)
def test_a_daily_expression_fires_exactly_once_per_local_day_for_a_year(tz: ZoneInfo) -> None:
    got = fires("30 2 * * *", tz, datetime(2026, 1, 1, tzinfo=tz), 365)
    local_days = [t.astimezone(tz).date() for t in got]
    assert len(set(local_days)) == 365
    assert local_days[0].isoformat() == "2026-01-01" and local_days[-1].isoformat() == "2026-12-31"
    assert all(b > a for a, b in itertools.pairwise(got))


@pytest.mark.timeout(10)
def test_invalid_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError):
        next_fire("not a cron", BERLIN, utc(2026, 1, 1))
    with pytest.raises(ValueError):
        next_fire("30 2 * * *", BERLIN, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="never fires"):
        next_fire("0 0 31 2 *", BERLIN, utc(2026, 1, 1))
    assert latest_fire_between("0 0 31 2 *", BERLIN, utc(2020, 1, 1), utc(2026, 1, 1)) is None


# --- latest_fire_between --------------------------------------------------------------
@pytest.mark.timeout(10)
def test_latest_fire_between_bounds() -> None:
    cron, tz = "30 2 * * *", ZoneInfo("UTC")
    assert latest_fire_between(cron, tz, utc(2026, 1, 1), utc(2026, 1, 8, 12)) == utc(2026, 1, 8, 2, 30)
    # end inclusive, start exclusive
    assert latest_fire_between(cron, tz, utc(2026, 1, 7, 3), utc(2026, 1, 8, 2, 30)) == utc(2026, 1, 8, 2, 30)
    assert latest_fire_between(cron, tz, utc(2026, 1, 8, 2, 30), utc(2026, 1, 8, 12)) is None
    assert latest_fire_between(cron, tz, utc(2026, 1, 8, 3), utc(2026, 1, 9, 2, 29, 59)) is None
    # an empty or reversed window
    assert latest_fire_between(cron, tz, utc(2026, 1, 9), utc(2026, 1, 8)) is None


@pytest.mark.timeout(10)
def test_latest_fire_between_with_end_in_the_repeated_hour() -> None:
    start = utc(2026, 10, 20)
    # end at 02:20 CET (second pass): 02:30 CEST, forty minutes earlier in UTC, already fired.
    assert latest_fire_between("30 2 * * *", BERLIN, start, utc(2026, 10, 25, 1, 20)) == utc(
        2026, 10, 25, 0, 30
    )
    # end at 02:20 CEST (first pass): today's 02:30 has not come yet.
    assert latest_fire_between("30 2 * * *", BERLIN, start, utc(2026, 10, 25, 0, 20)) == utc(
        2026, 10, 24, 0, 30
    )


@pytest.mark.timeout(10)
def test_latest_fire_between_at_the_spring_forward_jump() -> None:
    start = utc(2026, 3, 20)
    assert latest_fire_between("30 2 * * *", BERLIN, start, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 1, 0)
    assert latest_fire_between("30 2 * * *", BERLIN, start, utc(2026, 3, 29, 0, 59, 59)) == utc(
        2026, 3, 28, 1, 30
    )


CRONS = [
    "30 2 * * *",
    "*/30 * * * *",
    "0 * * * *",
    "15 1,2,3 * * *",
    "0 2 * * 0",
    "45 23 L * *",
    "*/7 2 * * *",
]
ZONES = [ZoneInfo("UTC"), BERLIN, NEW_YORK, LORD_HOWE, ZoneInfo("Asia/Kolkata")]
# Instants near Berlin's and New York's 2026 changes, plus anywhere in the year.
INSTANTS = st.one_of(
    st.datetimes(datetime(2026, 3, 7), datetime(2026, 3, 10), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 3, 28), datetime(2026, 3, 30), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 10, 24), datetime(2026, 10, 26), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 10, 3), datetime(2026, 10, 5), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC)),
)


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(cron=st.sampled_from(CRONS), tz=st.sampled_from(ZONES), after=INSTANTS)
def test_next_and_latest_agree(cron: str, tz: ZoneInfo, after: datetime) -> None:
    nxt = next_fire(cron, tz, after)
    assert nxt > after and nxt.tzinfo is UTC
    # nothing fires strictly between `after` and the next fire time
    assert latest_fire_between(cron, tz, after, nxt - timedelta(microseconds=1)) is None
    assert latest_fire_between(cron, tz, after, nxt) == nxt
    assert latest_fire_between(cron, tz, after - timedelta(days=40), nxt) == nxt
    # and the fire after that is later still
    assert next_fire(cron, tz, nxt) > nxt


# --- stable_delay -----------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_stable_delay_is_deterministic_and_pinned() -> None:
    # Pinned so that a change of the derivation (which would move every job's fire time)
    # is a deliberate one.
    assert stable_delay("nightly-pg", 600) == pytest.approx(62.90219934189594, abs=1e-9)
    assert stable_delay("nightly-pg", 600) == stable_delay("nightly-pg", 600)
    assert stable_delay("nightly-pg", 600) != stable_delay("nightly-my", 600)
    assert stable_delay("nightly-pg", 0) == 0.0


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_stable_delay_rejects_bad_maximum(bad: float) -> None:
    with pytest.raises(ValueError):
        stable_delay("job", bad)


@pytest.mark.timeout(30)
@given(job=st.text(min_size=1, max_size=64), maximum=st.floats(min_value=0, max_value=1e9))
def test_stable_delay_in_half_open_range(job: str, maximum: float) -> None:
    d = stable_delay(job, maximum)
    assert d == 0.0 if maximum == 0 else 0.0 <= d < maximum


@pytest.mark.timeout(10)
def test_stable_delay_spreads_jobs() -> None:
    delays = [stable_delay(f"job-{i}", 3600) for i in range(200)]
    # Ten 6-minute buckets, each should get a share; a constant or clumped function fails.
    buckets = {int(d // 360) for d in delays}
    assert buckets == set(range(10))
