"""Step 1, initialize: test the source and every destination, decide the databases.

A destination that fails its test is dropped for this execution (it becomes ``partial``);
if none is left, or the source fails, the execution fails here, before anything is written.
"""

from __future__ import annotations

from backupd.domain.states import Step
from backupd.errors import StepFailed
from backupd.pipeline.context import RunnerContext, destination_error


def run(ctx: RunnerContext) -> dict[str, str]:
    """Given the context, test source and destinations, fill ``source_info``, ``databases``
    and ``started_at``; return destinations dropped (name → reason); raise StepFailed if the
    source or every destination fails."""
    ctx.started_at = ctx.clock()
    ctx.source_info = ctx.source.test()
    ctx.log(
        "info",
        Step.INITIALIZE,
        f"source {ctx.job.source}: {ctx.source_info.engine} {ctx.source_info.version}",
    )
    dropped: dict[str, str] = {}
    for name, dest in list(ctx.destinations.items()):
        ctx.cancel.check()
        try:
            dest.test()
        except Exception as exc:
            dropped[name] = str(exc)
            del ctx.destinations[name]
            ctx.log("error", Step.INITIALIZE, destination_error(name, exc, " unusable"), DESTINATION=name)
    if not ctx.destinations:
        raise StepFailed(step="initialize", reason="no destination usable: " + "; ".join(dropped.values()))
    # the job's list narrows the source's; an empty list on both means every database
    chosen = ctx.job.databases or ctx.configured_databases
    ctx.databases = list(chosen) if chosen else ctx.source.list_databases()
    extra = getattr(ctx.source, "extra_objects", None)
    if extra is not None:
        ctx.databases += [name for name in extra() if name not in ctx.databases]
    if not ctx.databases:
        raise StepFailed(step="initialize", reason=f"source {ctx.job.source} has no databases to back up")
    ctx.log("info", Step.INITIALIZE, "databases: " + ", ".join(ctx.databases))
    return dropped
