"""The built-in scheduler: works out when each job's cron schedule is due and hands the job
to the queue.

State lives in the store, one time per job ("last triggered"): the scheduled time (not the
wall-clock time of the pass) up to which that job's schedule has been dealt with. Every
decision is made from that time, the cron expression and the clock, so the scheduler itself
keeps nothing that a restart would lose:

* A job is **due** when the first fire time after its recorded time, plus its stable random
  delay (:func:`~backupd.domain.schedule.stable_delay`), is at or before now. It fires once,
  however many fire times went by (a suspend, a wall clock jumping forward), and the latest
  of them is recorded.
* The time is recorded **before** the queue is called, so a crash in between loses that run
  rather than running it twice.
* A wall clock that jumps **backwards** fires nothing already recorded: the next fire time
  is still computed from the recorded one. Only a recorded time more than
  :data:`CLOCK_SKEW_LIMIT` in the future is taken for a clock that was wrong and is reset
  to now, so that a clock fixed after running far ahead does not stall a job for days.
* The first pass that sees a job (at start, or after a reload adds it) handles downtime.
  A job never triggered before records now and does not fire. Otherwise a due run is the
  **catch-up** run (reason ``"catch-up"``): it fires once, like systemd's
  ``Persistent=true``; with ``catch_up = false`` it is recorded as handled without firing.

The scheduler only calls ``trigger(job, reason)``. Coalescing a trigger while the job is
still running (DESIGN §8) is the queue's business; this module neither knows nor cares.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from backupd.domain.schedule import latest_fire_between, next_fire, stable_delay

log = logging.getLogger("backupd.scheduler")

REASON_SCHEDULE = "schedule"
REASON_CATCH_UP = "catch-up"
CLOCK_SKEW_LIMIT = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A job's schedule as the scheduler needs it (from ``JobConfig``)."""

    cron: str
    catch_up: bool = True
    random_delay: float = 0.0


class ScheduleStore(Protocol):
    """Where each job's last triggered (scheduled) time persists; the daemon backs it with SQLite."""

    def get_last_triggered(self, job: str) -> datetime | None: ...

    def set_last_triggered(self, job: str, when: datetime) -> None: ...


def utc_now() -> datetime:
    """Return the current wall-clock time as an aware UTC datetime."""
    return datetime.now(UTC)


@functools.lru_cache(maxsize=512)
def _next_after(cron: str, tz: ZoneInfo, last: datetime) -> datetime:
    # Most passes only ask "is the next fire time after `last` reached yet?", with the same
    # arguments as the pass before; croniter is slow enough for that to be worth caching.
    # Only recorded times go through here, never the ever-changing `now`.
    return next_fire(cron, tz, last)


class Scheduler:
    """Fires jobs on their cron schedules; see the module docstring for the rules.

    ``jobs`` and ``tz`` are called on every pass, so a reload takes effect at the next one.
    ``clock`` returns an aware datetime; tests inject their own.
    """

    def __init__(
        self,
        jobs: Callable[[], Mapping[str, ScheduleSpec]],
        store: ScheduleStore,
        trigger: Callable[[str, str], None],
        tz: Callable[[], ZoneInfo],
        clock: Callable[[], datetime] = utc_now,
        max_sleep: float = 60.0,
    ) -> None:
        if max_sleep <= 0:
            raise ValueError(f"max_sleep must be > 0, not {max_sleep!r}")
        self._jobs = jobs
        self._store = store
        self._trigger = trigger
        self._tz = tz
        self._clock = clock
        self._max_sleep = max_sleep
        self._seen: set[str] = set()
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()

    def tick(self, now: datetime | None = None) -> float:
        """Given the current time (default: the clock), fire every job that is due and
        return the seconds until the next pass should run (at most ``max_sleep``, so a
        wall-clock jump is noticed within that); raise ValueError if ``now`` is naive."""
        with self._lock:
            now = _aware_utc(self._clock() if now is None else now)
            try:
                jobs = dict(self._jobs())
                tz = self._tz()
            except Exception:
                log.exception("scheduler: cannot read the job list or time zone")
                return self._max_sleep
            sleep = self._max_sleep
            for job, spec in jobs.items():
                if not spec.cron:
                    continue
                try:
                    wake_at = self._tick_job(job, spec, tz, now)
                except Exception as exc:
                    self._report_failure(job, exc)
                    continue
                if self._failing.pop(job, None) is not None:
                    log.info("job %s: schedule works again", job, extra={"JOB": job})
                sleep = min(sleep, max(0.0, (wake_at - now).total_seconds()))
            # A job that left the config and comes back later is seen for the first time again.
            self._seen &= jobs.keys()
            self._failing = {j: text for j, text in self._failing.items() if j in jobs}
            return sleep

    def _tick_job(self, job: str, spec: ScheduleSpec, tz: ZoneInfo, now: datetime) -> datetime:
        """Given one job, fire it if due and return when it next needs a pass."""
        delay = timedelta(seconds=stable_delay(job, spec.random_delay))
        first_sight = job not in self._seen
        last = self._store.get_last_triggered(job)
        last = None if last is None else _aware_utc(last)
        if last is not None and last - now > CLOCK_SKEW_LIMIT:
            log.warning(
                "job %s: last triggered at %s, later than now (%s) by more than %s; "
                "the clock was wrong, starting the schedule afresh",
                job,
                last.isoformat(),
                now.isoformat(),
                CLOCK_SKEW_LIMIT,
                extra={"JOB": job},
            )
            last = None
        if last is None:
            self._store.set_last_triggered(job, now)
            self._seen.add(job)
            return next_fire(spec.cron, tz, now) + delay

        if _next_after(spec.cron, tz, last) + delay <= now:
            due = latest_fire_between(spec.cron, tz, last, now - delay)
            if due is None:  # cannot happen with a consistent calendar; never loop on it
                raise RuntimeError(f"next fire after {last.isoformat()} is due but none found")
            self._store.set_last_triggered(job, due)
            last = due
            if first_sight and not spec.catch_up:
                log.info(
                    "job %s: missed its run at %s while stopped; catch_up is off, skipping it",
                    job,
                    due.isoformat(),
                    extra={"JOB": job},
                )
            else:
                self._fire(job, REASON_CATCH_UP if first_sight else REASON_SCHEDULE, due)
        self._seen.add(job)
        return _next_after(spec.cron, tz, last) + delay

    def _fire(self, job: str, reason: str, scheduled: datetime) -> None:
        log.info(
            "job %s: triggered (%s, scheduled %s)", job, reason, scheduled.isoformat(), extra={"JOB": job}
        )
        try:
            self._trigger(job, reason)
        except Exception:
            # Already recorded as triggered: the run is lost, never repeated on the next pass.
            log.exception("job %s: the queue refused the %s trigger", job, reason, extra={"JOB": job})

    def _report_failure(self, job: str, exc: Exception) -> None:
        # The same broken schedule would otherwise log a traceback on every pass.
        text = f"{type(exc).__name__}: {exc}"
        if self._failing.get(job) != text:
            self._failing[job] = text
            log.error("job %s: cannot compute its schedule: %s", job, text, exc_info=exc, extra={"JOB": job})

    def next_run(self, job: str, now: datetime | None = None) -> datetime | None:
        """Given a job name, return when the scheduler will next fire it (aware UTC, delay
        included; at or before now if a catch-up or overdue run waits for the next pass), or
        None if the job is unknown, has no schedule or its schedule never fires."""
        spec = self._jobs().get(job)
        if spec is None or not spec.cron:
            return None
        now = _aware_utc(self._clock() if now is None else now)
        tz = self._tz()
        delay = timedelta(seconds=stable_delay(job, spec.random_delay))
        last = self._store.get_last_triggered(job)
        last = None if last is None else _aware_utc(last)
        try:
            if last is None or last - now > CLOCK_SKEW_LIMIT:
                return next_fire(spec.cron, tz, now) + delay
            if job not in self._seen and not spec.catch_up:
                # The first pass will record missed runs without firing them.
                last = latest_fire_between(spec.cron, tz, last, now - delay) or last
            return _next_after(spec.cron, tz, last) + delay
        except ValueError:
            return None

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Given a stop and a wake event, run passes until ``stop`` is set; ``wake`` (set on
        reload) starts a pass early. Never raises: a failing pass is logged and retried."""
        # threading cannot wait on two events; a helper turns `stop` into a wake-up as well.
        threading.Thread(target=lambda: (stop.wait(), wake.set()), name="scheduler-stop", daemon=True).start()
        while not stop.is_set():
            try:
                timeout = self.tick()
            except Exception:
                log.exception("scheduler pass failed")
                timeout = self._max_sleep
            if wake.wait(timeout):
                wake.clear()


def _aware_utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, not naive {when.isoformat()}")
    return when.astimezone(UTC)
