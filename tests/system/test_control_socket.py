"""Hostile and broken control-socket clients get an error or a closed connection within a
bound, and the daemon keeps serving everyone else."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from backupd.ipc.protocol import MAX_FRAME
from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("socket")
    # the socket lives in a directory any user may traverse, so that the permission test
    # reaches the socket's own mode and SO_PEERCRED
    sock_dir = Path(tempfile.mkdtemp(prefix="backupd-sock-"))
    sock_dir.chmod(0o755)
    cfg = base_config(root)
    cfg["daemon"]["socket"] = str(sock_dir / "control.sock")
    sqlite_job(cfg, root, "app")
    d = DaemonProc(root, cfg).start()
    yield d
    d.stop()
    shutil.rmtree(sock_dir, ignore_errors=True)


def _raw(d: DaemonProc, payload: bytes, timeout: float = 15) -> tuple[list[dict], float]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(d.socket))
    started = time.monotonic()
    s.sendall(payload)
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.endswith(b"\n") and len(buf.splitlines()) >= payload.count(b"\n"):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    s.close()
    return [json.loads(line) for line in buf.splitlines() if line.strip()], time.monotonic() - started


def _healthy(d: DaemonProc) -> None:
    res = d.ctl("status", "--json")
    assert res.returncode == 0, res.stderr


def test_malformed_json(served: DaemonProc) -> None:
    replies, _ = _raw(served, b'{"id": 1, "op": \n')
    assert replies[0]["ok"] is False and replies[0]["error"]["code"] == "bad-request"
    _healthy(served)


def test_deeply_nested_json(served: DaemonProc) -> None:
    replies, _ = _raw(served, b'{"id":1,"op":"status","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    assert replies[0]["error"]["code"] == "bad-request" and "nested" in replies[0]["error"]["message"]
    _healthy(served)


def test_oversized_frame(served: DaemonProc) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(str(served.socket))
    try:
        s.sendall(b'{"id":1,"op":"status","pad":"' + b"x" * (MAX_FRAME + 10))
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = s.recv(65536)
    s.close()
    reply = json.loads(data.splitlines()[0])
    assert reply["error"]["code"] == "frame-too-large"
    _healthy(served)


def test_unknown_op_and_bad_args(served: DaemonProc) -> None:
    replies, _ = _raw(served, b'{"id":1,"op":"format-disk"}\n{"id":2,"op":"history","limit":"many"}\n[1,2]\n')
    assert replies[0] == {
        "id": 1,
        "ok": False,
        "error": {"code": "unknown-op", "message": "unknown operation 'format-disk'"},
    }
    assert replies[1]["error"]["code"] == "bad-request" and "limit" in replies[1]["error"]["message"]
    assert replies[2]["error"]["code"] == "bad-request"


def test_wrong_protocol_version(served: DaemonProc) -> None:
    replies, _ = _raw(served, b'{"id":7,"op":"hello","protocol":99}\n')
    assert replies[0]["id"] == 7 and replies[0]["error"]["code"] == "protocol-mismatch"
    replies, _ = _raw(served, b'{"id":8,"op":"hello","protocol":1}\n')
    assert replies[0]["result"]["protocol"] == 1


def test_slow_client_is_cut_off_and_others_are_served(served: DaemonProc) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(served.socket))
    result: dict = {}

    def dribble() -> None:
        started = time.monotonic()
        try:
            for b in b'{"id":1,"op":"status"':
                s.send(bytes([b]))
                time.sleep(1)
        except OSError:
            pass
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        result["reply"] = data
        result["elapsed"] = time.monotonic() - started

    t = threading.Thread(target=dribble)
    t.start()
    time.sleep(1.5)
    for _ in range(5):  # others are served meanwhile
        _healthy(served)
    t.join(40)
    s.close()
    assert result["elapsed"] < 25
    assert result["reply"] == b"" or json.loads(result["reply"].splitlines()[0])["error"]["code"] == "timeout"


def _as_nobody(path: Path, requests: list[dict]) -> list:
    """Fork, drop to uid/gid 65534, send ``requests`` over the socket; return the replies
    (or the connect error's errno name)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(str(path))
                f = s.makefile("rwb")
                out = []
                for req in requests:
                    f.write(json.dumps(req).encode() + b"\n")
                    f.flush()
                    out.append(json.loads(f.readline()))
            except PermissionError:
                out = ["EACCES"]
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_mutating_ops_need_admin(served: DaemonProc) -> None:
    os.chmod(served.socket, 0o666)  # let an unprivileged user connect, so SO_PEERCRED decides
    try:
        replies = _as_nobody(served.socket, [{"id": 1, "op": "status"}, {"id": 2, "op": "run", "job": "app"}])
        assert replies[0]["ok"] is True
        assert (
            replies[1]["error"]["code"] == "permission-denied"
            and "uid 65534" in replies[1]["error"]["message"]
        )
    finally:
        os.chmod(served.socket, 0o660)
    assert _as_nobody(served.socket, [{"id": 1, "op": "status"}]) == ["EACCES"]


def test_missing_and_refused_socket(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    d = DaemonProc(tmp_path, cfg)
    res = d.ctl("status")
    assert res.returncode == 3 and "does not exist" in res.stderr and str(d.socket) in res.stderr
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d.socket))
    stale.close()
    res = d.ctl("status")
    assert res.returncode == 3 and "refused" in res.stderr
