"""Prometheus metrics: rendering (checked with prometheus_client's own parser), the HTTP
endpoint on 127.0.0.1, and the atomic textfile for node_exporter."""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backupd.metrics import (
    STATUSES,
    GroupKey,
    GroupMetrics,
    JobMetrics,
    MetricsServer,
    MetricsSnapshot,
    parse_listen,
    render,
    write_textfile,
)

pytestmark = pytest.mark.timeout(15)

ODD = 'off"site\\n\nx'  # a quote, a backslash and a newline: all need escaping


def snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(
        version="1.2.3",
        start_time=1_700_000_000.5,
        queue_length=3,
        running_jobs=1,
        jobs={
            "nightly-pg": JobMetrics(
                last_success_time=1_700_000_123.25,
                last_duration_seconds=12.5,
                last_size_bytes=4096,
                last_status="partial",
                executions_by_status={"succeeded": 10, "partial": 1, "failed": 2},
            ),
            "fresh": JobMetrics(),
        },
        groups={
            GroupKey("nightly-pg", "app", "disk"): GroupMetrics(7, 1_700_000_500.0, True),
            GroupKey("nightly-pg", "app", ODD): GroupMetrics(2, 1_700_000_600.0, False),
            GroupKey("nightly-pg", "crm", "disk"): GroupMetrics(1),
        },
        bytes_written_total={"disk": 10_000_000_000, ODD: 5},
    )


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples}


def test_render_types_names_and_values():
    fams = families(render(snapshot()))
    types = {name: f.type for name, f in fams.items()}
    assert types == {
        "backupd_info": "gauge",
        "backupd_start_time_seconds": "gauge",
        "backupd_queue_length": "gauge",
        "backupd_running_jobs": "gauge",
        "backupd_job_last_success_timestamp_seconds": "gauge",
        "backupd_job_last_duration_seconds": "gauge",
        "backupd_job_last_size_bytes": "gauge",
        "backupd_job_last_status": "gauge",
        "backupd_job_executions": "counter",
        "backupd_backups": "gauge",
        "backupd_last_verification_timestamp_seconds": "gauge",
        "backupd_last_verification_ok": "gauge",
        "backupd_written_bytes": "counter",
    }
    assert all(f.documentation for f in fams.values())
    assert samples(fams, "backupd_info") == {(("version", "1.2.3"),): 1.0}
    assert samples(fams, "backupd_start_time_seconds") == {(): 1_700_000_000.5}
    assert samples(fams, "backupd_queue_length") == {(): 3.0}
    assert samples(fams, "backupd_running_jobs") == {(): 1.0}
    # Unknown values of a job that never ran are left out, not reported as 0.
    assert samples(fams, "backupd_job_last_success_timestamp_seconds") == {
        (("job", "nightly-pg"),): 1_700_000_123.25
    }
    assert samples(fams, "backupd_job_last_duration_seconds") == {(("job", "nightly-pg"),): 12.5}
    assert samples(fams, "backupd_job_last_size_bytes") == {(("job", "nightly-pg"),): 4096.0}


def test_last_status_is_enum_style():
    fams = families(render(snapshot()))
    status = samples(fams, "backupd_job_last_status")
    assert status == {
        (("job", "nightly-pg"), ("status", s)): (1.0 if s == "partial" else 0.0) for s in STATUSES
    }


def test_unknown_status_still_shows():
    snap = MetricsSnapshot(version="1", start_time=0, jobs={"j": JobMetrics(last_status="exotic")})
    status = samples(families(render(snap)), "backupd_job_last_status")
    assert status[(("job", "j"), ("status", "exotic"))] == 1.0
    assert sum(status.values()) == 1.0
    assert len(status) == len(STATUSES) + 1


def test_counters_have_total_suffix():
    fams = families(render(snapshot()))
    executions = fams["backupd_job_executions"]
    assert {s.name for s in executions.samples} == {"backupd_job_executions_total"}
    assert samples(fams, "backupd_job_executions") == {
        (("job", "nightly-pg"), ("status", "succeeded")): 10.0,
        (("job", "nightly-pg"), ("status", "partial")): 1.0,
        (("job", "nightly-pg"), ("status", "failed")): 2.0,
    }
    assert samples(fams, "backupd_written_bytes") == {
        (("destination", "disk"),): 10_000_000_000.0,
        (("destination", ODD),): 5.0,
    }


def test_groups_and_label_escaping():
    text = render(snapshot())
    assert 'destination="off\\"site\\\\n\\nx"' in text
    fams = families(text)
    labels = (("database", "app"), ("destination", ODD), ("job", "nightly-pg"))
    assert samples(fams, "backupd_backups")[labels] == 2.0
    assert samples(fams, "backupd_last_verification_timestamp_seconds")[labels] == 1_700_000_600.0
    assert samples(fams, "backupd_last_verification_ok")[labels] == 0.0
    ok = samples(fams, "backupd_last_verification_ok")
    assert ok[(("database", "app"), ("destination", "disk"), ("job", "nightly-pg"))] == 1.0
    # Never verified: counted, but no verification samples.
    never = (("database", "crm"), ("destination", "disk"), ("job", "nightly-pg"))
    assert samples(fams, "backupd_backups")[never] == 1.0
    assert never not in ok


def test_empty_snapshot_renders():
    fams = families(render(MetricsSnapshot(version="0", start_time=1.0)))
    assert samples(fams, "backupd_queue_length") == {(): 0.0}
    assert samples(fams, "backupd_job_last_status") == {}


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9187", ("127.0.0.1", 9187)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))],
)
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9187", ":9187", "host:", "host:99999", "host:x"])
def test_parse_listen_rejects(listen):
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_server_serves_metrics_on_loopback():
    calls = []

    def provider() -> MetricsSnapshot:
        calls.append(1)
        return snapshot()

    server = MetricsServer("127.0.0.1:0", provider)
    server.start()
    try:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        status, ctype, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert families(body)["backupd_queue_length"].samples[0].value == 3.0
        assert len(calls) == 1
        assert _get(f"http://127.0.0.1:{port}/")[0] == 404
        assert _get(f"http://127.0.0.1:{port}/metricsx")[0] == 404
        assert _get(f"http://127.0.0.1:{port}/metrics", method="POST")[0] == 405
        assert len(calls) == 1
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_server_answers_500_when_the_provider_fails():
    def provider() -> MetricsSnapshot:
        raise RuntimeError("state DB locked")

    server = MetricsServer("127.0.0.1:0", provider)
    server.start()
    try:
        status, _, body = _get(f"http://127.0.0.1:{server.address[1]}/metrics")
    finally:
        server.stop()
    assert status == 500
    assert "locked" not in body


def test_textfile_is_written_atomically_with_mode_0644(tmp_path):
    target = tmp_path / "backupd.prom"
    target.write_text("old\n")
    old_inode = target.stat().st_ino
    old_umask = os.umask(0o077)
    try:
        write_textfile(target, render(snapshot()))
    finally:
        os.umask(old_umask)
    assert target.read_text() == render(snapshot())
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.stat().st_ino != old_inode  # replaced by rename, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["backupd.prom"]


def test_textfile_failure_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "backupd.prom"

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_textfile(target, "x 1\n")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        write_textfile(tmp_path / "missing" / "backupd.prom", "x 1\n")
