"""Tests for the scheduler with an injected clock: first start, catch-up, DST, clock jumps,
stable delays, failures and the run loop."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backupd.domain.schedule import stable_delay
from backupd.scheduler import Scheduler, ScheduleSpec

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class MemoryStore:
    """The ScheduleStore port in a dict; ``writes`` keeps every write in order."""

    def __init__(self, **initial: datetime) -> None:
        self.times: dict[str, datetime] = dict(initial)
        self.writes: list[tuple[str, datetime]] = []

    def get_last_triggered(self, job: str) -> datetime | None:
        return self.times.get(job)

    def set_last_triggered(self, job: str, when: datetime) -> None:
        self.times[job] = when
        self.writes.append((job, when))


class Rig:
    """A scheduler over a fake clock, recording (job, reason, clock time) of each trigger."""

    def __init__(
        self,
        jobs: dict[str, ScheduleSpec],
        start: datetime,
        *,
        tz: ZoneInfo = UTC_ZONE,
        store: MemoryStore | None = None,
        max_sleep: float = 60.0,
    ) -> None:
        self.jobs = jobs
        self.now = start
        self.store = store or MemoryStore()
        self.fired: list[tuple[str, str, datetime]] = []
        self.sched = Scheduler(
            jobs=lambda: self.jobs,
            store=self.store,
            trigger=lambda job, reason: self.fired.append((job, reason, self.now)),
            tz=lambda: tz,
            clock=lambda: self.now,
            max_sleep=max_sleep,
        )

    def tick(self) -> float:
        return self.sched.tick()

    def run_until(self, end: datetime, jitter: random.Random | None = None) -> None:
        """Advance the clock by each returned sleep (plus optional lateness) until ``end``."""
        while self.now < end:
            sleep = self.tick()
            assert 0 < sleep <= self.sched._max_sleep
            late = jitter.uniform(0, 3) if jitter else 0.0
            self.now += timedelta(seconds=sleep + late)

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.fired]


DAILY = ScheduleSpec("30 2 * * *")


# --- first start and catch-up -----------------------------------------------------------
@pytest.mark.timeout(10)
def test_new_job_does_not_fire_at_first_start() -> None:
    rig = Rig({"app": DAILY}, utc(2026, 1, 1, 12))
    rig.tick()
    assert rig.fired == []
    assert rig.store.times["app"] == utc(2026, 1, 1, 12)
    rig.run_until(utc(2026, 1, 2, 12))
    assert rig.fired == [("app", "schedule", utc(2026, 1, 2, 2, 30))]


@pytest.mark.timeout(10)
def test_catch_up_fires_once_after_a_week_of_downtime() -> None:
    store = MemoryStore(app=utc(2026, 1, 1, 2, 30))
    rig = Rig({"app": DAILY}, utc(2026, 1, 8, 12), store=store)
    rig.tick()
    assert rig.fired == [("app", "catch-up", utc(2026, 1, 8, 12))]
    assert store.times["app"] == utc(2026, 1, 8, 2, 30)  # the scheduled time, not now
    rig.run_until(utc(2026, 1, 9, 12))
    assert rig.reasons() == ["catch-up", "schedule"]
    assert rig.fired[-1][2] == utc(2026, 1, 9, 2, 30)


@pytest.mark.timeout(10)
def test_no_catch_up_when_disabled() -> None:
    store = MemoryStore(app=utc(2026, 1, 1, 2, 30))
    rig = Rig({"app": ScheduleSpec("30 2 * * *", catch_up=False)}, utc(2026, 1, 8, 12), store=store)
    rig.tick()
    assert rig.fired == []
    assert store.times["app"] == utc(2026, 1, 8, 2, 30)  # the missed run is handled
    rig.run_until(utc(2026, 1, 9, 12))
    assert rig.fired == [("app", "schedule", utc(2026, 1, 9, 2, 30))]


@pytest.mark.timeout(10)
def test_restart_without_missed_runs_fires_nothing() -> None:
    store = MemoryStore(app=utc(2026, 1, 8, 2, 30))
    rig = Rig({"app": DAILY}, utc(2026, 1, 8, 12), store=store)
    rig.tick()
    assert rig.fired == [] and store.writes == []


@pytest.mark.timeout(10)
def test_catch_up_is_per_job_and_only_at_first_sight() -> None:
    store = MemoryStore(a=utc(2026, 1, 1, 2, 30), b=utc(2026, 1, 1, 2, 30))
    rig = Rig({"a": DAILY}, utc(2026, 1, 8, 12), store=store)
    rig.tick()
    # A reload adds b, which was removed from the config a week ago: it catches up when seen.
    rig.jobs = {"a": DAILY, "b": ScheduleSpec("30 2 * * *", catch_up=False)}
    rig.now += timedelta(minutes=5)
    rig.tick()
    assert [(j, r) for j, r, _ in rig.fired] == [("a", "catch-up")]
    assert store.times["b"] == utc(2026, 1, 8, 2, 30)


@pytest.mark.timeout(10)
def test_a_job_readded_after_removal_is_seen_afresh() -> None:
    rig = Rig({"app": ScheduleSpec("30 2 * * *", catch_up=False)}, utc(2026, 1, 1, 12))
    rig.run_until(utc(2026, 1, 2, 12))
    assert len(rig.fired) == 1
    rig.jobs = {}  # removed at a reload, the daemon keeps running
    rig.run_until(utc(2026, 1, 5, 12))
    rig.jobs = {"app": ScheduleSpec("30 2 * * *", catch_up=False)}  # back again
    rig.run_until(utc(2026, 1, 6, 12))
    # the runs it missed while gone are not fired on its return; the next one is
    assert [t for _, _, t in rig.fired] == [utc(2026, 1, 2, 2, 30), utc(2026, 1, 6, 2, 30)]


# --- DST --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("start", "change_day", "fire_on_change_day"),
    [
        (utc(2026, 3, 24, 12), "2026-03-29", utc(2026, 3, 29, 1, 0)),  # 02:30 does not exist: 03:00 CEST
        (utc(2026, 10, 20, 12), "2026-10-25", utc(2026, 10, 25, 0, 30)),  # 02:30 twice: first one
    ],
    ids=["spring-forward", "fall-back"],
)
@pytest.mark.parametrize("jitter", [None, 7], ids=["exact", "late-wakeups"])
def test_one_fire_per_day_across_dst(
    start: datetime, change_day: str, fire_on_change_day: datetime, jitter: int | None
) -> None:
    rig = Rig({"app": DAILY}, start, tz=BERLIN)
    rig.run_until(start + timedelta(days=10), jitter=random.Random(jitter) if jitter is not None else None)
    local_days = [t.astimezone(BERLIN).date().isoformat() for _, _, t in rig.fired]
    assert len(local_days) == 10 and len(set(local_days)) == 10  # none lost, none doubled
    assert change_day in local_days
    assert set(rig.reasons()) == {"schedule"}
    fire = next(t for _, _, t in rig.fired if t.astimezone(BERLIN).date().isoformat() == change_day)
    assert fire_on_change_day <= fire < fire_on_change_day + timedelta(seconds=10)
    # every other day fires at 02:30 local
    assert all(
        t.astimezone(BERLIN).strftime("%H:%M") == "02:30"
        for _, _, t in rig.fired
        if t.astimezone(BERLIN).date().isoformat() != change_day or fire_on_change_day.hour == 0
    )


# --- wall-clock jumps -------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_clock_jumping_back_an_hour_does_not_fire_again() -> None:
    rig = Rig({"app": DAILY, "hourly": ScheduleSpec("0 * * * *")}, utc(2026, 1, 1, 0, 5))
    rig.run_until(utc(2026, 1, 1, 2, 31))
    assert [(j, t) for j, _, t in rig.fired] == [
        ("hourly", utc(2026, 1, 1, 1)),
        ("hourly", utc(2026, 1, 1, 2)),
        ("app", utc(2026, 1, 1, 2, 30)),
    ]
    rig.now = utc(2026, 1, 1, 1, 31)  # NTP steps the clock back an hour
    rig.run_until(utc(2026, 1, 1, 3, 1))
    assert [(j, t) for j, _, t in rig.fired[3:]] == [("hourly", utc(2026, 1, 1, 3))]


@pytest.mark.timeout(10)
def test_clock_jumping_forward_fires_once() -> None:
    rig = Rig({"app": DAILY}, utc(2026, 1, 1, 12))
    rig.tick()
    rig.now = utc(2026, 1, 5, 12)  # a suspended machine wakes up four days later
    rig.tick()
    assert rig.fired == [("app", "schedule", utc(2026, 1, 5, 12))]
    assert rig.store.times["app"] == utc(2026, 1, 5, 2, 30)


@pytest.mark.timeout(10)
def test_clock_far_behind_the_record_restarts_the_schedule(caplog: pytest.LogCaptureFixture) -> None:
    # The clock ran days ahead when the record was written and has been corrected since.
    store = MemoryStore(app=utc(2026, 1, 20, 2, 30))
    rig = Rig({"app": DAILY}, utc(2026, 1, 10, 12), store=store)
    with caplog.at_level(logging.WARNING, logger="backupd.scheduler"):
        rig.tick()
    assert "clock was wrong" in caplog.text
    assert store.times["app"] == utc(2026, 1, 10, 12)
    rig.run_until(utc(2026, 1, 11, 12))
    assert rig.fired == [("app", "schedule", utc(2026, 1, 11, 2, 30))]


# --- stable random delay ------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_stable_random_delay_shifts_fire_times_deterministically() -> None:
    spec = ScheduleSpec("30 2 * * *", random_delay=1800)
    jobs = {"alpha": spec, "beta": spec}
    delays = {name: timedelta(seconds=stable_delay(name, 1800)) for name in jobs}
    assert delays["alpha"] != delays["beta"]

    runs = []
    for _ in range(2):  # two daemons (or two restarts) agree on the times
        rig = Rig(jobs, utc(2026, 1, 1, 12))
        rig.run_until(utc(2026, 1, 3, 12))
        runs.append(rig.fired)
    assert runs[0] == runs[1]
    for day in (2, 3):
        for name in jobs:
            assert (name, "schedule", utc(2026, 1, day, 2, 30) + delays[name]) in runs[0]
    assert len(runs[0]) == 4


@pytest.mark.timeout(10)
def test_delay_not_yet_elapsed_is_not_a_missed_run() -> None:
    spec = ScheduleSpec("30 2 * * *", random_delay=3600)
    delay = timedelta(seconds=stable_delay("app", 3600))
    store = MemoryStore(app=utc(2026, 1, 7, 2, 30))
    rig = Rig({"app": spec}, utc(2026, 1, 8, 2, 30) + delay / 2, store=store)
    rig.tick()  # a restart inside today's delay window: nothing was missed yet
    assert rig.fired == []
    rig.run_until(utc(2026, 1, 8, 12))
    assert rig.fired == [("app", "schedule", utc(2026, 1, 8, 2, 30) + delay)]


# --- ordering and failures ----------------------------------------------------------------
@pytest.mark.timeout(10)
def test_records_the_scheduled_time_before_triggering() -> None:
    store = MemoryStore(app=utc(2026, 1, 1, 2, 30))
    seen: list[datetime | None] = []
    sched = Scheduler(
        jobs=lambda: {"app": DAILY},
        store=store,
        trigger=lambda job, reason: seen.append(store.get_last_triggered(job)),
        tz=lambda: UTC_ZONE,
        clock=lambda: utc(2026, 1, 2, 2, 30, 5),
    )
    sched.tick()
    assert seen == [utc(2026, 1, 2, 2, 30)]


@pytest.mark.timeout(10)
def test_a_refused_trigger_is_not_repeated(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def refuse(job: str, reason: str) -> None:
        calls.append(reason)
        raise RuntimeError("queue is shutting down")

    store = MemoryStore(app=utc(2026, 1, 1, 2, 30))
    sched = Scheduler(
        lambda: {"app": DAILY}, store, refuse, lambda: UTC_ZONE, clock=lambda: utc(2026, 1, 2, 3)
    )
    with caplog.at_level(logging.ERROR, logger="backupd.scheduler"):
        sched.tick()
        sched.tick()
    assert calls == ["catch-up"]
    assert "refused" in caplog.text


@pytest.mark.timeout(10)
def test_a_broken_job_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig({"broken": ScheduleSpec("61 25 * * *"), "app": DAILY}, utc(2026, 1, 1, 12))
    with caplog.at_level(logging.ERROR, logger="backupd.scheduler"):
        rig.run_until(utc(2026, 1, 2, 12))
    assert rig.fired == [("app", "schedule", utc(2026, 1, 2, 2, 30))]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "broken" in errors[0].getMessage()  # logged once, not every pass


@pytest.mark.timeout(10)
def test_a_failing_store_write_does_not_trigger() -> None:
    class FailingStore(MemoryStore):
        def set_last_triggered(self, job: str, when: datetime) -> None:
            raise OSError("disk full")

    rig = Rig({"app": DAILY}, utc(2026, 1, 2, 12), store=FailingStore(app=utc(2026, 1, 1, 2, 30)))
    rig.tick()
    assert rig.fired == []


@pytest.mark.timeout(10)
def test_sleep_is_bounded_and_aims_at_the_next_fire() -> None:
    rig = Rig({"app": DAILY}, utc(2026, 1, 1, 2, 29, 30), store=MemoryStore(app=utc(2025, 12, 31, 2, 30)))
    rig.tick()  # first sight: nothing missed (the last run is recorded)
    assert rig.tick() == pytest.approx(30.0)
    rig.now = utc(2026, 1, 1, 2, 31)
    assert rig.tick() == 60.0  # after firing, the next is a day away: capped at max_sleep
    with pytest.raises(ValueError):
        rig.sched.tick(datetime(2026, 1, 1))


# --- next_run ---------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_next_run() -> None:
    spec = ScheduleSpec("30 2 * * *", random_delay=600)
    delay = timedelta(seconds=stable_delay("app", 600))
    store = MemoryStore(app=utc(2026, 1, 1, 2, 30), off=utc(2026, 1, 1, 2, 30))
    jobs = {"app": spec, "off": ScheduleSpec("30 2 * * *", catch_up=False), "new": DAILY}
    rig = Rig(jobs, utc(2026, 1, 8, 12), store=store)
    # before the first pass: a pending catch-up is due now-ish, a skipped one is not
    assert rig.sched.next_run("app") == utc(2026, 1, 2, 2, 30) + delay
    assert rig.sched.next_run("off") == utc(2026, 1, 9, 2, 30)
    assert rig.sched.next_run("new") == utc(2026, 1, 9, 2, 30)
    assert rig.sched.next_run("unknown") is None
    rig.tick()
    assert rig.sched.next_run("app") == utc(2026, 1, 9, 2, 30) + delay
    rig.jobs = {"never": ScheduleSpec("0 0 31 2 *")}
    assert rig.sched.next_run("never") is None


# --- the loop -------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_run_loop_wakes_on_reload_and_stops_promptly() -> None:
    passes: list[float] = []

    def jobs() -> dict[str, ScheduleSpec]:
        passes.append(time.monotonic())
        return {}

    sched = Scheduler(jobs, MemoryStore(), lambda job, reason: None, lambda: UTC_ZONE, max_sleep=60)
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop, wake), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not passes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(passes) == 1
    wake.set()  # a reload: another pass long before max_sleep
    while len(passes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(passes) == 2
    started = time.monotonic()
    stop.set()  # only stop: the loop must not sit out its 60-second sleep
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2


@pytest.mark.timeout(10)
def test_run_loop_survives_a_failing_pass(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    stop, wake = threading.Event(), threading.Event()

    def jobs() -> dict[str, ScheduleSpec]:
        nonlocal calls
        calls += 1
        if calls >= 3:
            stop.set()
        raise RuntimeError("config gone")

    sched = Scheduler(jobs, MemoryStore(), lambda job, reason: None, lambda: UTC_ZONE, max_sleep=0.01)
    with caplog.at_level(logging.ERROR, logger="backupd.scheduler"):
        sched.run(stop, wake)
    assert calls == 3
    assert "cannot read the job list" in caplog.text
