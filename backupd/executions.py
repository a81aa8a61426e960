"""Running one backup execution: build the adapters from the current config, run the
pipeline, record the outcome, log it with its MESSAGE_ID and notify.

This is the composition of the pipeline with the daemon's services; the pipeline itself
knows nothing of SQLite, journald or notification channels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from backupd import catalog
from backupd.adapters import AdapterContext
from backupd.bus import EventBus
from backupd.config.load import LoadedConfig
from backupd.domain.records import BackupRecord
from backupd.domain.sidecar import Sidecar
from backupd.domain.states import Status, Step
from backupd.execlog import StoreJournal
from backupd.pipeline.context import RunnerContext
from backupd.pipeline.runner import Runner
from backupd.scheduler.queue import WorkItem
from backupd.sources.registry import build_source
from backupd.storage.base import StorageAdapter
from backupd.storage.registry import build_storage
from backupd.store.state import StateStore

log = logging.getLogger("backupd")


@dataclass
class Services:
    """What executions need from the daemon; ``notify(kind, job, execution_id, status,
    message)`` and ``apply_retention`` may be absent."""

    store: StateStore
    bus: EventBus
    config: Callable[[], LoadedConfig]
    adapter_context: AdapterContext
    keyring: Callable[[], Any]
    notify: Callable[..., None] | None = None
    apply_retention: Callable[[str, str, str], dict[str, Any]] | None = None
    compression_threads: Callable[[], int] = lambda: 0


def build_destinations(
    loaded: LoadedConfig, names: list[str], actx: AdapterContext
) -> dict[str, StorageAdapter]:
    cfg = loaded.config
    return {name: build_storage(name, cfg.destinations[name], actx) for name in names}


def catalog_recorder(store: StateStore) -> Callable[[str, Sidecar], None]:
    def record(destination: str, sc: Sidecar) -> None:
        store.upsert_backup(record_from_sidecar(destination, sc))

    return record


def record_from_sidecar(destination: str, sc: Sidecar) -> BackupRecord:
    """Given a destination and a sidecar, return the catalog row it stands for."""
    created = datetime.strptime(sc.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return BackupRecord(
        destination=destination,
        key=sc.key,
        job=sc.job,
        database=sc.database,
        created_at=created.timestamp(),
        size=sc.size,
        sha256=sc.sha256 or "",
        execution_id=sc.execution_id,
        sidecar=msgspec.json.encode(sc).decode(),
    )


def run_backup(services: Services, item: WorkItem) -> Status:
    """Given a queued backup item, run it to the end; return the final status. Never raises:
    whatever fails is recorded on the execution."""
    store, eid = services.store, item.execution_id
    store.mark_running(eid)
    journal = StoreJournal(store, services.bus, item.job, eid, item.progress)
    services.bus.publish({"type": "status", "execution_id": eid, "job": item.job, "status": "running"})
    journal.log("info", Step.INITIALIZE, f"backup started ({item.trigger})", MESSAGE_ID=catalog.STARTED)
    if services.notify is not None:
        services.notify("backup.started", item.job, eid, "running", f"backup of {item.job} started")
    loaded = services.config()
    job = loaded.config.jobs.get(item.job)
    timer: threading.Timer | None = None
    destinations: dict[str, StorageAdapter] = {}
    try:
        if job is None:
            raise LookupError(f"job {item.job!r} is no longer in the configuration")
        actx = services.adapter_context.ensure()
        source = build_source(job.source, loaded.config.sources[job.source], actx)
        destinations = build_destinations(loaded, list(job.destinations), actx)
        key = services.keyring().for_encryption(job.encryption) if job.encryption else None
        ctx = RunnerContext(
            job_name=item.job,
            job=job,
            execution_id=eid,
            source=source,
            destinations=destinations,
            journal=journal,
            cancel=item.cancel,
            encryption_key=key,
            compression_threads=services.compression_threads(),
            expected_sizes=_previous_sizes(store, item.job),
            configured_databases=list(getattr(loaded.config.sources[job.source], "databases", None) or []),
        )
    except Exception as exc:
        journal.log("error", Step.INITIALIZE, str(exc), MESSAGE_ID=catalog.FAILED)
        store.finish_execution(
            eid, Status.FAILED, error=f"initialize: {exc}", details={"failed_step": "initialize"}
        )
        _announce(services, item, Status.FAILED, f"initialize: {exc}")
        return Status.FAILED
    if job.timeout:
        timer = threading.Timer(
            job.timeout, item.cancel.cancel, kwargs={"reason": f"timed out after {job.timeout:g} s"}
        )
        timer.daemon = True
        timer.start()
    runner = Runner(
        catalog=catalog_recorder(store),
        record=lambda c: _record(services, item, c),
        apply_retention=services.apply_retention,
    )
    try:
        status = runner.run(ctx)
        # watchers learn the end after retention, the execution's last step
        services.bus.publish({"type": "status", "execution_id": eid, "job": item.job, "status": status.value})
        return status
    finally:
        if timer is not None:
            timer.cancel()
        for dest in destinations.values():
            try:
                dest.close()
            except Exception:
                log.debug("closing %s failed", dest.name, exc_info=True)


def _previous_sizes(store: StateStore, job: str) -> dict[str, int]:
    """Return the plaintext size of each database in the job's last good run (for ETAs)."""
    last = store.last_execution(job, Status.SUCCEEDED)
    if last is None:
        return {}
    return {d["database"]: int(d.get("plaintext_size") or 0) for d in last.details.get("databases", [])}


def _record(services: Services, item: WorkItem, ctx: RunnerContext) -> None:
    stored = [r for r in ctx.results if r.copies]
    size = sum(r.size for r in stored) if stored else None
    sha = stored[0].sha256 if len(ctx.results) == 1 and stored else None
    details = {
        "failed_step": ctx.failed_step.value if ctx.failed_step and ctx.status != Status.SUCCEEDED else None,
        "databases": [
            {
                "database": r.database,
                "key": r.key,
                "size": r.size,
                "sha256": r.sha256,
                "plaintext_size": r.plaintext_size,
                "destinations": [c.destination for c in r.copies],
                "failed_destinations": r.failed_destinations,
                "error": r.error,
            }
            for r in ctx.results
        ],
    }
    services.store.finish_execution(
        item.execution_id, ctx.status, error=ctx.error, size=size, sha256=sha, details=details
    )
    message_id = {
        Status.SUCCEEDED: catalog.SUCCEEDED,
        Status.PARTIAL: catalog.PARTIAL,
    }.get(ctx.status, catalog.FAILED)
    ctx.journal.log(
        "info" if ctx.status == Status.SUCCEEDED else "error",
        (ctx.failed_step or Step.COMPLETION).value,
        f"backup {ctx.status.value}" + (f": {ctx.error}" if ctx.error else ""),
        MESSAGE_ID=message_id,
    )
    _announce(services, item, ctx.status, ctx.error, publish=False)


def _announce(
    services: Services, item: WorkItem, status: Status, error: str | None, publish: bool = True
) -> None:
    """Notify channels of the outcome; with ``publish``, tell watchers too (a run that went
    through the pipeline tells them after retention instead)."""
    if publish:
        services.bus.publish(
            {"type": "status", "execution_id": item.execution_id, "job": item.job, "status": status.value}
        )
    if services.notify is not None:
        services.notify(f"backup.{status.value}", item.job, item.execution_id, status.value, error or "")
