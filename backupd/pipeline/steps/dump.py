"""Step 2, dump: stream one database through compress → encrypt → hash → every destination.

The dump process's stdout is the head of one stream. The compressor is flushed and the
encryptor writes its final chunk only after the dump tool has exited 0 and its output
passed the engine's validity checks; on any failure every writer aborts, so no object is
committed and temp space is freed.
"""

from __future__ import annotations

from dataclasses import dataclass

from backupd.domain.naming import object_key
from backupd.domain.states import Step
from backupd.pipeline.context import DatabaseResult, RunnerContext, destination_error
from backupd.pipeline.fanout import FanOutSink
from backupd.pipeline.streams import EXTENSIONS, ByteSink, HashingSink, compressor
from backupd.storage.base import ObjectWriter


@dataclass
class PendingObject:
    """A fully written, not yet committed object on each surviving destination."""

    key: str
    fanout: FanOutSink
    stored: HashingSink
    plain: HashingSink


def _encryptor(ctx: RunnerContext, downstream: ByteSink) -> ByteSink:
    if ctx.encryption_key is None:
        return downstream
    from backupd.crypto.bkd1 import Encryptor

    return Encryptor(downstream, ctx.encryption_key)


def run(ctx: RunnerContext, database: str, result: DatabaseResult) -> PendingObject:
    """Given a database, dump it into writers on every destination; return the pending
    object; raise DumpFailed/StorageError/Cancelled (after aborting everything) on failure."""
    ctx.journal.step(Step.DUMP)
    assert ctx.started_at is not None
    handle = ctx.source.dump(database)
    remove_cancel = ctx.cancel.on_cancel(handle.abort)
    writers: dict[str, ObjectWriter] = {}
    fan: FanOutSink | None = None
    plain: HashingSink | None = None
    try:
        ctx.cancel.check()
        ext = handle.extension + EXTENSIONS[ctx.job.compression] + (".bkd" if ctx.encryption_key else "")
        key = object_key(ctx.job_name, ctx.started_at, ctx.execution_id, database, ext)
        result.key = key
        for name, dest in ctx.destinations.items():
            if name in result.failed_destinations:
                continue
            try:
                writers[name] = dest.open_writer(key)
            except Exception as exc:
                result.failed_destinations[name] = str(exc)
                ctx.log("error", Step.DUMP, destination_error(name, exc), DESTINATION=name)

        def dropped(name: str, reason: str) -> None:
            result.failed_destinations[name] = reason
            ctx.log("error", Step.DUMP, reason, DESTINATION=name)

        fan = FanOutSink(writers, dropped)
        if not writers:
            fan.write(b"")  # raises the "every destination failed" error
        stored = HashingSink(fan)
        comp = compressor(
            ctx.job.compression, _encryptor(ctx, stored), ctx.job.compression_level, ctx.compression_threads
        )
        plain = HashingSink(comp)
        ctx.log("info", Step.DUMP, f"dumping {database} to {key}")
        expected = ctx.expected_sizes.get(database)
        while data := handle.read():
            plain.write(data)
            # cheap: the journal throttles; the estimate is the last good run's size
            ctx.journal.progress(Step.DUMP, plain.size, max(expected, plain.size) if expected else None)
        result.tool = handle.finish()
        ctx.cancel.check()
        plain.finish()  # flushes the compressor and writes the encryptor's final chunk
        ctx.journal.progress(Step.DUMP, plain.size, plain.size)
        result.plaintext_size, result.plaintext_sha256 = plain.size, plain.sha256
        result.size, result.sha256 = stored.size, stored.sha256
        ctx.log("info", Step.DUMP, f"dumped {plain.size} bytes, stored {stored.size} bytes")
        return PendingObject(key, fan, stored, plain)
    except BaseException:
        handle.abort()
        if plain is not None:
            plain.abort()
        elif fan is not None:
            fan.abort()
        else:
            for w in writers.values():
                w.abort()
        raise
    finally:
        remove_cancel()
