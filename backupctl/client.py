"""The control client: connect, say hello, send requests, read replies and event streams.

Connection failures say where the client looked and why it failed: the socket is missing
(daemon not running, or another path), refused (stale socket), or not permitted (not in
the socket's group).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backupd.errors import DaemonUnreachable, ProtocolError, SocketNotPermitted, from_code
from backupd.ipc.protocol import MAX_FRAME, PROTOCOL_VERSION, encode

DEFAULT_SOCKET = Path("/run/backupd/control.sock")


def find_socket(explicit: str | None, demo: str | None) -> Path:
    """Return the socket path: --socket, then --demo DIR, then $BACKUPD_SOCKET, then the default."""
    if explicit:
        return Path(explicit)
    if demo:
        return Path(demo).resolve() / "control.sock"
    env = os.environ.get("BACKUPD_SOCKET")
    return Path(env) if env else DEFAULT_SOCKET


class Client:
    def __init__(self, path: Path, timeout: float | None = 30.0) -> None:
        self.path = path
        self._next_id = 0
        self._buf = b""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            sock.close()
            raise DaemonUnreachable(
                socket=str(path), reason="the socket does not exist (is backupd running? try --socket PATH)"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonUnreachable(
                socket=str(path), reason="connection refused (a stale socket: backupd is not running)"
            ) from None
        except PermissionError:
            sock.close()
            raise SocketNotPermitted(
                socket=str(path), reason="permission denied (you need to be root or in group backupd-admin)"
            ) from None
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENOTSOCK or exc.errno == errno.ECONNREFUSED:
                raise DaemonUnreachable(
                    socket=str(path), reason=f"not a listening socket ({exc.strerror})"
                ) from None
            raise DaemonUnreachable(socket=str(path), reason=exc.strerror or str(exc)) from None
        self._sock = sock
        self.server = self.call("hello", protocol=PROTOCOL_VERSION, client="backupctl")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_frame(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise DaemonUnreachable(socket=str(self.path), reason="no reply (timed out)") from None
            if not chunk:
                raise DaemonUnreachable(socket=str(self.path), reason="the daemon closed the connection")
            self._buf += chunk
            if len(self._buf) > 64 * MAX_FRAME:
                raise ProtocolError(reason="reply too large")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            obj = json.loads(line)
        except ValueError:
            raise ProtocolError(reason="the daemon sent malformed JSON") from None
        if not isinstance(obj, dict):
            raise ProtocolError(reason="the daemon sent a non-object frame")
        return obj

    def call(self, op: str, on_event: Callable[[dict[str, Any]], None] | None = None, **args: Any) -> Any:
        """Send ``op`` with ``args``; pass streamed events to ``on_event``; return the result or
        raise the BackupdError subclass the daemon named."""
        self._next_id += 1
        req = {"id": self._next_id, "op": op, **{k: v for k, v in args.items() if v is not None}}
        self._sock.sendall(encode(req))
        while True:
            frame = self._read_frame()
            if "event" in frame:
                if on_event is not None:
                    on_event(frame["event"])
                continue
            if frame.get("ok"):
                return frame.get("result")
            err = frame.get("error") or {}
            raise from_code(str(err.get("code", "error")), str(err.get("message", "unknown error")))
