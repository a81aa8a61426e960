"""The runner: initialize → (dump → upload per database) → completion → retention.

A failure names the step it happened in; one database failing does not stop the others;
completion always runs; retention runs only when every database was stored somewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backupd.domain.states import Status, Step
from backupd.errors import Cancelled
from backupd.pipeline.context import DatabaseResult, RunnerContext
from backupd.pipeline.steps import completion, dump, initialize, retention, upload


@dataclass
class Runner:
    """The services the steps call out to (all optional, for tests)."""

    catalog: upload.Catalog | None = None
    record: Callable[[RunnerContext], None] | None = None
    apply_retention: retention.ApplyRetention | None = None

    def run(self, ctx: RunnerContext) -> Status:
        """Given a context, run every step; return the final status (never raises for a
        failed backup: the failure is in ``ctx.status``/``ctx.error``/``ctx.failed_step``)."""
        step = Step.INITIALIZE
        try:
            ctx.journal.step(step)
            dropped = initialize.run(ctx)
            for database in ctx.databases:
                ctx.cancel.check()
                result = DatabaseResult(database, failed_destinations=dict(dropped))
                ctx.results.append(result)
                try:
                    step = Step.DUMP
                    pending = dump.run(ctx, database, result)
                    step = Step.UPLOAD
                    upload.run(ctx, pending, result, self.catalog)
                except Cancelled:
                    raise
                except Exception as exc:
                    result.error = f"{step.value}: {exc}"
                    ctx.failed_step = step
                    ctx.log("error", step, f"{database}: {exc}")
        except Cancelled as exc:
            ctx.status, ctx.failed_step, ctx.error = Status.CANCELLED, step, str(exc)
            ctx.log("warning", step, f"cancelled during {step.value}: {exc}")
        except Exception as exc:
            ctx.status, ctx.failed_step, ctx.error = Status.FAILED, step, f"{step.value}: {exc}"
            ctx.log("error", step, str(exc))
        try:
            completion.run(ctx, self.record)
        finally:
            if ctx.status in (Status.SUCCEEDED, Status.PARTIAL):
                retention.run(ctx, self.apply_retention)
        return ctx.status
