"""Scheduling: cron due times and catch-up (:mod:`.scheduler`), feeding the job queue."""

from backupd.scheduler.scheduler import (
    REASON_CATCH_UP,
    REASON_SCHEDULE,
    Scheduler,
    ScheduleSpec,
    ScheduleStore,
    utc_now,
)

__all__ = ["REASON_CATCH_UP", "REASON_SCHEDULE", "ScheduleSpec", "ScheduleStore", "Scheduler", "utc_now"]
