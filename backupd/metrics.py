"""Prometheus metrics: a snapshot of the daemon's state, rendered in the text exposition
format, served over HTTP (``[daemon].metrics_listen``) and/or written for node_exporter's
textfile collector (``[daemon].metrics_textfile``).

The text is produced by prometheus_client from a private registry holding one collector that
reads a :class:`MetricsSnapshot`, so names, escaping and ``_total`` suffixes follow the
library rather than hand-written formatting, and nothing leaks in from the library's global
registry (process metrics of whatever imported it). The daemon builds the snapshot from the
state DB on each scrape; this module never touches SQLite.

Conventions: every name starts with ``backupd_``; times are unix seconds
(``*_timestamp_seconds``), sizes ``*_bytes``, counters ``*_total``. A job's last status is
an enum-style gauge: one sample per known status with the ``status`` label, 1 for the
current one and 0 for the others, so ``backupd_job_last_status{status="failed"} == 1``
selects failing jobs. A value the daemon does not know yet (a job that never succeeded)
is left out rather than reported as 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger("backupd.metrics")

# What generate_latest() writes; newer prometheus_client releases point CONTENT_TYPE_LATEST
# at a later format version, so the type is spelled out to match the bytes served.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The execution statuses of DESIGN §5, in lifecycle order.
STATUSES = ("queued", "running", "succeeded", "partial", "failed", "cancelled", "interrupted")


class GroupKey(NamedTuple):
    """One backup group: a job's backups of one database on one destination."""

    job: str
    database: str
    destination: str


@dataclass(frozen=True)
class JobMetrics:
    """What the state DB knows about one job. None means unknown (e.g. never succeeded)."""

    last_success_time: float | None = None
    last_duration_seconds: float | None = None
    last_size_bytes: int | None = None
    last_status: str | None = None
    executions_by_status: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupMetrics:
    """Stored backups of one :class:`GroupKey` and their latest verification."""

    backups: int = 0
    last_verification_time: float | None = None
    last_verification_ok: bool | None = None


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything rendered on one scrape; the daemon fills it from the state DB."""

    version: str
    start_time: float
    queue_length: int = 0
    running_jobs: int = 0
    jobs: Mapping[str, JobMetrics] = field(default_factory=dict)
    groups: Mapping[GroupKey, GroupMetrics] = field(default_factory=dict)
    bytes_written_total: Mapping[str, int] = field(default_factory=dict)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snap = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snap
        yield InfoMetricFamily("backupd", "Version of the running backupd.", value={"version": s.version})
        start = GaugeMetricFamily("backupd_start_time_seconds", "When the daemon started, in unix seconds.")
        start.add_metric([], s.start_time)
        yield start
        queue = GaugeMetricFamily("backupd_queue_length", "Executions waiting in the queue.")
        queue.add_metric([], s.queue_length)
        yield queue
        running = GaugeMetricFamily("backupd_running_jobs", "Executions running now.")
        running.add_metric([], s.running_jobs)
        yield running
        yield from self._jobs()
        yield from self._groups()
        written = CounterMetricFamily(
            "backupd_written_bytes", "Bytes stored to each destination.", labels=["destination"]
        )
        for destination, total in sorted(s.bytes_written_total.items()):
            written.add_metric([destination], total)
        yield written

    def _jobs(self) -> Iterator[Metric]:
        jobs = sorted(self._snap.jobs.items())
        success = GaugeMetricFamily(
            "backupd_job_last_success_timestamp_seconds",
            "When the job's last successful backup finished, in unix seconds.",
            labels=["job"],
        )
        duration = GaugeMetricFamily(
            "backupd_job_last_duration_seconds", "How long the job's last execution ran.", labels=["job"]
        )
        size = GaugeMetricFamily(
            "backupd_job_last_size_bytes", "Stored size of the job's last backup.", labels=["job"]
        )
        status = GaugeMetricFamily(
            "backupd_job_last_status",
            "Status of the job's last execution: 1 for the current status, 0 for the others.",
            labels=["job", "status"],
        )
        executions = CounterMetricFamily(
            "backupd_job_executions", "Executions in the history, by final status.", labels=["job", "status"]
        )
        for job, m in jobs:
            if m.last_success_time is not None:
                success.add_metric([job], m.last_success_time)
            if m.last_duration_seconds is not None:
                duration.add_metric([job], m.last_duration_seconds)
            if m.last_size_bytes is not None:
                size.add_metric([job], m.last_size_bytes)
            if m.last_status is not None:
                # A status this module does not know still shows up, after the known ones.
                extra = () if m.last_status in STATUSES else (m.last_status,)
                for name in (*STATUSES, *extra):
                    status.add_metric([job, name], 1.0 if name == m.last_status else 0.0)
            for name, count in sorted(m.executions_by_status.items()):
                executions.add_metric([job, name], count)
        yield from (success, duration, size, status, executions)

    def _groups(self) -> Iterator[Metric]:
        labels = ["job", "database", "destination"]
        backups = GaugeMetricFamily("backupd_backups", "Stored backups (with a sidecar).", labels=labels)
        verified = GaugeMetricFamily(
            "backupd_last_verification_timestamp_seconds",
            "When the group's latest verification ran, in unix seconds.",
            labels=labels,
        )
        verified_ok = GaugeMetricFamily(
            "backupd_last_verification_ok", "1 if the latest verification passed, 0 if not.", labels=labels
        )
        for key, g in sorted(self._snap.groups.items()):
            values = [key.job, key.database, key.destination] if isinstance(key, GroupKey) else list(key)
            backups.add_metric(values, g.backups)
            if g.last_verification_time is not None:
                verified.add_metric(values, g.last_verification_time)
            if g.last_verification_ok is not None:
                verified_ok.add_metric(values, 1.0 if g.last_verification_ok else 0.0)
        yield from (backups, verified, verified_ok)


def render(snapshot: MetricsSnapshot) -> str:
    """Given a snapshot, return it in the Prometheus text exposition format (0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry).decode("utf-8")


def parse_listen(listen: str) -> tuple[str, int]:
    """Given ``host:port`` (``[v6addr]:port`` for IPv6), return (host, port); raise
    ValueError if it is malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:9187), got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class MetricsServer:
    """Given ``listen`` (``host:port``; port 0 picks a free one) and a provider of snapshots,
    serve ``GET /metrics`` from a daemon thread once started; other paths answer 404, other
    methods 405; raise ValueError on a malformed ``listen``."""

    def __init__(self, listen: str, provider: Callable[[], MetricsSnapshot]) -> None:
        self._host, self._port = parse_listen(listen)
        self._provider = provider
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Return the bound (host, port), the real port once started."""
        if self._server is not None:
            host, port = self._server.server_address[:2]
            return str(host), int(port)
        return self._host, self._port

    def start(self) -> None:
        """Bind and start serving; raise OSError if the address cannot be bound."""
        provider = self._provider

        class Handler(BaseHTTPRequestHandler):
            # A scraper that stalls mid-request must not pin a thread for ever.
            timeout = 10
            server_version = "backupd-metrics"

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self._reply(404, b"not found; metrics are at /metrics\n", "text/plain; charset=utf-8")
                    return
                try:
                    body = render(provider()).encode("utf-8")
                except Exception:
                    log.exception("could not collect metrics")
                    self._reply(500, b"could not collect metrics\n", "text/plain; charset=utf-8")
                    return
                self._reply(200, body, CONTENT_TYPE)

            def _not_allowed(self) -> None:
                self._reply(405, b"only GET is served\n", "text/plain; charset=utf-8")

            do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if code == 405:
                    self.send_header("Allow", "GET")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics %s: " + format, self.address_string(), *args)

        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        self._server = server_class((self._host, self._port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket; return when the serving thread has ended or
        ``timeout`` seconds have passed."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None


def write_textfile(path: str | os.PathLike[str], text: str) -> None:
    """Given a target path and the rendered text, replace the file atomically (temporary
    file in the same directory, fsync, rename, mode 0644) so node_exporter never reads half
    a file; raise OSError if the directory is not writable."""
    target = Path(path)
    # The temporary name must not end in .prom: the textfile collector reads every *.prom.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
