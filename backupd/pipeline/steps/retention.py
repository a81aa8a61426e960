"""Step 5, retention: after a successful (or partial) backup, prune each group that got a
new backup, per destination. Errors here are logged; they never change the backup's status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backupd.domain.states import Step
from backupd.pipeline.context import RunnerContext

ApplyRetention = Callable[[str, str, str], dict[str, Any]]
"""(job, database, destination) → summary of what was kept and deleted."""


def run(ctx: RunnerContext, apply: ApplyRetention | None) -> None:
    ctx.journal.step(Step.RETENTION)
    if apply is None:
        ctx.log("info", Step.RETENTION, "no retention service configured")
        return
    for result in ctx.results:
        for copy in result.copies:
            try:
                summary = apply(ctx.job_name, result.database, copy.destination)
            except Exception as exc:
                ctx.log(
                    "error",
                    Step.RETENTION,
                    f"{copy.destination}/{result.database}: {exc}",
                    DESTINATION=copy.destination,
                )
                continue
            ctx.retention_summary[f"{copy.destination}/{result.database}"] = summary
            note = " (not applied: beyond max_delete_fraction)" if summary.get("skipped") else ""
            ctx.log(
                "warning" if note else "info",
                Step.RETENTION,
                f"{copy.destination}/{result.database}: keep {summary.get('keep', 0)}, "
                f"deleted {summary.get('deleted', 0)}{note}",
                DESTINATION=copy.destination,
            )
