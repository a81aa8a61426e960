"""Fills a MetricsSnapshot from the state DB and the queue, and serves it: ``backupctl
metrics``, an optional HTTP listener (``[daemon].metrics_listen``) and an optional
node_exporter textfile (``[daemon].metrics_textfile``, rewritten after every execution)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from backupd import __version__
from backupd.metrics import (
    GroupKey,
    GroupMetrics,
    JobMetrics,
    MetricsServer,
    MetricsSnapshot,
    render,
    write_textfile,
)

if TYPE_CHECKING:
    from backupd.app import Application

log = logging.getLogger("backupd")


def snapshot(app: Application) -> MetricsSnapshot:
    store = app.store
    counts = store.count_by_status()
    jobs: dict[str, JobMetrics] = {}
    written: dict[str, int] = {}
    for name in app.loaded.config.jobs:
        last = store.last_execution(name)
        ok = store.last_execution(name, status="succeeded")  # type: ignore[arg-type]
        jobs[name] = JobMetrics(
            last_success_time=ok.finished_at if ok else None,
            last_duration_seconds=last.duration if last and last.finished_at else None,
            last_size_bytes=last.size if last else None,
            last_status=last.status if last else None,
            executions_by_status={s: n for (j, s), n in counts.items() if j == name},
        )
    counted: dict[GroupKey, int] = {}
    verified: dict[GroupKey, tuple[float, bool]] = {}
    for rec in store.backups():
        key = GroupKey(rec.job, rec.database, rec.destination)
        counted[key] = counted.get(key, 0) + 1
        written[rec.destination] = written.get(rec.destination, 0) + rec.size
        if rec.last_verified_at is not None and verified.get(key, (0.0, False))[0] < rec.last_verified_at:
            verified[key] = (rec.last_verified_at, rec.verify_result == "ok")
    groups = {
        key: GroupMetrics(
            backups=n,
            last_verification_time=verified[key][0] if key in verified else None,
            last_verification_ok=verified[key][1] if key in verified else None,
        )
        for key, n in counted.items()
    }
    snap = app.queue.snapshot()
    return MetricsSnapshot(
        version=__version__,
        start_time=app.service.started_at,
        queue_length=len(snap["queued"]),
        running_jobs=len(snap["running"]),
        jobs=jobs,
        groups=groups,
        bytes_written_total=written,
    )


def install(app: Application, ext: dict[str, Any]) -> Any:
    ext["metrics"] = lambda: render(snapshot(app))
    cfg = app.loaded.config.daemon
    server: MetricsServer | None = None
    if cfg.metrics_listen:
        server = MetricsServer(cfg.metrics_listen, lambda: snapshot(app))
        server.start()
        log.info("metrics on http://%s/metrics", cfg.metrics_listen)
    stop = threading.Event()
    if cfg.metrics_textfile:
        path = cfg.metrics_textfile
        sub = app.bus.subscribe()

        def refresh() -> None:
            try:
                write_textfile(path, render(snapshot(app)))
            except OSError as exc:
                log.warning("metrics textfile %s: %s", path, exc)

        def follow() -> None:
            refresh()
            while not stop.is_set():
                event = sub.get(timeout=1.0)
                if (
                    event
                    and event.get("type") == "status"
                    and event.get("status") not in ("queued", "running")
                ):
                    refresh()
            sub.close()

        threading.Thread(target=follow, name="metrics-textfile", daemon=True).start()

    def close() -> None:
        stop.set()
        if server is not None:
            server.stop()

    return close
