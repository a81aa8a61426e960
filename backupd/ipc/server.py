"""ControlServer: the Unix socket, one thread per client (bounded), frames of one JSON line.

Hostile or broken clients cannot hurt the daemon: a frame over 1 MiB, nesting deeper than
``MAX_DEPTH``, malformed JSON or an unknown op gets an error reply; a client that starts a
frame and then dribbles (or stops) is cut off after ``FRAME_TIMEOUT``; an idle client after
``IDLE_TIMEOUT``; beyond ``MAX_CLIENTS`` new connections are told ``busy`` and closed.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from backupd.errors import BackupdError
from backupd.ipc.protocol import MAX_DEPTH, MAX_FRAME, encode, error_reply, nesting_depth

log = logging.getLogger("backupd")
FRAME_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
MAX_CLIENTS = 64
POLL = 0.5
SO_PEERCRED_FMT = "3i"


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


Send = Callable[[dict[str, Any]], None]
Dispatch = Callable[[Peer, dict[str, Any], Send], dict[str, Any]]


class ClientGone(Exception):
    """The client closed its end while we were streaming to it."""


def inherited_socket() -> socket.socket | None:
    """Return the listening socket passed by systemd socket activation, if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    sock = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    return sock


class ControlServer:
    def __init__(self, path: Path, dispatch: Dispatch, group: str | None = "backupd-admin") -> None:
        self.path = path
        self._dispatch = dispatch
        self._group = group
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._thread: threading.Thread | None = None
        self.activated = False

    def listen(self) -> None:
        """Bind (or adopt the inherited socket), set mode 0660 and group; raise OSError if
        another daemon already serves this path."""
        sock = inherited_socket()
        if sock is not None:
            self.activated = True
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(self.path))
                    raise OSError(f"another backupd is already listening on {self.path}")
                except (ConnectionRefusedError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)
                finally:
                    probe.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o117)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o660)
            if self._group:
                try:
                    os.chown(self.path, -1, grp.getgrnam(self._group).gr_gid)
                except (KeyError, PermissionError):
                    pass  # no such group here, or not ours to give: 0660 with our own group
            sock.listen(64)
        sock.settimeout(POLL)
        self._sock = sock

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Return True while the accept loop runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        if not self.activated:
            self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(POLL)
                continue
            if not self._clients.acquire(blocking=False):
                self._refuse(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="control-client", daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(1)
            conn.sendall(encode(error_reply(None, "busy", f"too many clients (limit {MAX_CLIENTS})")))
        except OSError:
            pass
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(SO_PEERCRED_FMT))
            peer = Peer(*struct.unpack(SO_PEERCRED_FMT, creds))
            conn.settimeout(POLL)
            reader = _FrameReader(conn, self._stop)
            send_lock = threading.Lock()

            def send(obj: dict[str, Any]) -> None:
                data = encode(obj)
                with send_lock:
                    try:
                        conn.settimeout(30)
                        conn.sendall(data)
                        conn.settimeout(POLL)
                    except OSError as exc:
                        raise ClientGone() from exc

            while not self._stop.is_set():
                try:
                    frame = reader.next_frame()
                except _FrameError as exc:
                    send(error_reply(None, exc.code, exc.message))
                    return
                if frame is None:
                    return
                reply = self._handle(peer, frame, send)
                send(reply)
        except ClientGone:
            pass
        except Exception:
            log.exception("control client failed")
        finally:
            self._clients.release()
            conn.close()

    def _handle(self, peer: Peer, frame: bytes, send: Send) -> dict[str, Any]:
        if nesting_depth(frame) > MAX_DEPTH:
            return error_reply(None, "bad-request", f"JSON nested deeper than {MAX_DEPTH} levels")
        try:
            req = msgspec.json.decode(frame)
        except msgspec.DecodeError as exc:
            return error_reply(None, "bad-request", f"malformed JSON: {exc}")
        if not isinstance(req, dict):
            return error_reply(None, "bad-request", "a request is a JSON object")
        req_id, op = req.get("id"), req.get("op")
        try:
            return self._dispatch(peer, req, send)
        except ClientGone:
            raise
        except BackupdError as exc:
            return error_reply(req_id, exc.code, exc.message)
        except Exception as exc:  # one op's bug is reported to its client, never fatal
            log.exception("op %r failed", op)
            return error_reply(req_id, "internal-error", f"{type(exc).__name__}: {exc}")


class _FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


class _FrameReader:
    """Reads newline-terminated frames with a size limit and two timeouts."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self._conn, self._stop = conn, stop
        self._buf = bytearray()

    def next_frame(self) -> bytes | None:
        idle_since = time.monotonic()
        frame_started: float | None = time.monotonic() if self._buf else None
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                frame = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if frame.strip():
                    return frame
                continue
            if len(self._buf) > MAX_FRAME:
                raise _FrameError("frame-too-large", f"request larger than {MAX_FRAME} bytes")
            now = time.monotonic()
            if frame_started is not None and now - frame_started > FRAME_TIMEOUT:
                raise _FrameError("timeout", f"request not completed within {FRAME_TIMEOUT:g} s")
            if frame_started is None and now - idle_since > IDLE_TIMEOUT:
                return None
            if self._stop.is_set():
                return None
            try:
                chunk = self._conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            if frame_started is None:
                frame_started = time.monotonic()
            self._buf += chunk
