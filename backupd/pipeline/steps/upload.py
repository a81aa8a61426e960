"""Step 3, upload: commit the data object, verify it, then write the sidecar (the commit
marker) — on each destination independently."""

from __future__ import annotations

from collections.abc import Callable

from backupd import __version__
from backupd.domain.naming import sidecar_key
from backupd.domain.sidecar import EncryptionMeta, Sidecar, SourceMeta, ToolMeta
from backupd.domain.states import Step
from backupd.pipeline.context import DatabaseResult, RunnerContext, StoredCopy, destination_error
from backupd.pipeline.steps.dump import PendingObject
from backupd.storage.base import put_bytes

Catalog = Callable[[str, Sidecar], None]


def build_sidecar(ctx: RunnerContext, pending: PendingObject, result: DatabaseResult) -> Sidecar:
    assert ctx.started_at is not None and ctx.source_info is not None and result.tool is not None
    key = ctx.encryption_key
    return Sidecar(
        job=ctx.job_name,
        execution_id=ctx.execution_id,
        database=result.database,
        key=pending.key,
        source=SourceMeta(
            type=ctx.source.engine, engine_version=ctx.source_info.version, databases=[result.database]
        ),
        created_at=ctx.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        size=pending.stored.size,
        sha256=pending.stored.sha256,
        plaintext_size=pending.plain.size,
        plaintext_sha256=pending.plain.sha256,
        compression=ctx.job.compression,
        encryption=EncryptionMeta(format="BKD1", key_id=key.key_id.hex()) if key is not None else None,
        tool=ToolMeta(name=result.tool.name, version=result.tool.version, exit_code=result.tool.exit_code),
        backupd_version=__version__,
    )


def run(ctx: RunnerContext, pending: PendingObject, result: DatabaseResult, catalog: Catalog | None) -> None:
    """Given a pending object, commit → verify → sidecar on each destination; record the
    copies in ``result``; a destination that fails is recorded in ``failed_destinations`` and
    left with neither data nor sidecar."""
    ctx.journal.step(Step.UPLOAD)
    sidecar = build_sidecar(ctx, pending, result)
    body = sidecar.encode()
    for name, writer in list(pending.fanout.writers.items()):
        dest = ctx.destinations[name]
        committed = False
        try:
            writer.commit()
            committed = True
            dest.verify(pending.key, pending.stored.size, pending.stored.sha256)
            put_bytes(dest, sidecar_key(pending.key), body)
        except Exception as exc:
            result.failed_destinations[name] = str(exc)
            ctx.log("error", Step.UPLOAD, destination_error(name, exc), DESTINATION=name)
            if committed:
                try:
                    dest.delete(pending.key)
                except Exception as cleanup:
                    ctx.log("warning", Step.UPLOAD, f"destination {name}: cleanup failed: {cleanup}")
            else:
                writer.abort()
            continue
        result.copies.append(StoredCopy(name, pending.key, pending.stored.size, pending.stored.sha256))
        ctx.log(
            "info", Step.UPLOAD, f"destination {name}: committed and verified {pending.key}", DESTINATION=name
        )
        if catalog is not None:
            catalog(name, sidecar)
