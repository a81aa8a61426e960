"""Step 4, completion: decide the execution's status, then hand it to whoever records and
notifies. Always runs, whatever happened before."""

from __future__ import annotations

from collections.abc import Callable

from backupd.domain.states import Status, Step
from backupd.pipeline.context import RunnerContext


def decide_status(ctx: RunnerContext) -> Status:
    """Given the results, return succeeded (every database on every destination), partial
    (every database on at least one), or failed (some database stored nowhere)."""
    if not ctx.results or any(not r.copies for r in ctx.results):
        return Status.FAILED
    if any(r.failed_destinations for r in ctx.results):
        return Status.PARTIAL
    return Status.SUCCEEDED


def run(ctx: RunnerContext, record: Callable[[RunnerContext], None] | None) -> None:
    ctx.journal.step(Step.COMPLETION)
    if ctx.status == Status.RUNNING:
        ctx.status = decide_status(ctx)
        if ctx.status == Status.FAILED and ctx.error is None:
            failed = [r for r in ctx.results if not r.copies]
            ctx.error = "; ".join(f"{r.database}: {r.error or 'stored nowhere'}" for r in failed)
        elif ctx.status == Status.PARTIAL and ctx.error is None:
            ctx.error = "; ".join(
                f"{r.database}: not stored on {', '.join(sorted(r.failed_destinations))}"
                for r in ctx.results
                if r.failed_destinations
            )
    level = (
        "info" if ctx.status == Status.SUCCEEDED else "error" if ctx.status == Status.FAILED else "warning"
    )
    stored = sum(r.size for r in ctx.results if r.copies)
    detail = f": {ctx.error}" if ctx.error else ""
    ctx.log(level, Step.COMPLETION, f"{ctx.status.value}, {stored} bytes stored{detail}")
    if record is not None:
        record(ctx)
