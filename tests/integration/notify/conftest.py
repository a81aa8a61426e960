"""Local endpoints for the notification tests, all on 127.0.0.1: an HTTP server that records
what it receives (and can check webhook signatures the way a receiver would), a TCP server
that accepts connections and never answers, and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures.common import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool | None = None


@dataclass
class HttpRecorder:
    """Records requests; answers with ``statuses`` in turn (the last one repeats). With
    ``secret`` set it verifies X-Backupd-Signature independently and answers 401 on a
    mismatch, as a real receiver should."""

    port: int = 0
    statuses: list[int] = field(default_factory=lambda: [200])
    secret: bytes | None = None
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} request(s), got {len(self.requests)}")

    def check_signature(self, headers: dict[str, str], body: bytes) -> bool:
        assert self.secret is not None
        stamp = headers.get("x-backupd-timestamp", "")
        given = headers.get("x-backupd-signature", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return False
        mac = hmac.new(self.secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(f"sha256={mac}", given)


def _handler(recorder: HttpRecorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            item = Received(self.command, self.path, headers, body)
            if recorder.secret is not None:
                item.signature_ok = recorder.check_signature(headers, body)
            with recorder.lock:
                recorder.requests.append(item)
                index = min(len(recorder.requests), len(recorder.statuses)) - 1
            status = recorder.statuses[index]
            if item.signature_ok is False:
                status = 401
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", recorder.url("/elsewhere"))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def http_recorder() -> Iterator[HttpRecorder]:
    recorder = HttpRecorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.daemon_threads = True
    recorder.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield recorder
    server.shutdown()
    server.server_close()


@dataclass
class SilentServer:
    port: int
    accepted: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A TCP server that accepts every connection, reads nothing and never replies."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    info = SilentServer(listener.getsockname()[1])
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            info.accepted += 1

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield info
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


@dataclass
class SmtpCapture:
    port: int
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
        self.arrived.set()
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[SmtpCapture]:
    """aiosmtpd on 127.0.0.1, plain SMTP (no TLS, no auth) on a free port."""
    from aiosmtpd.controller import Controller

    capture = SmtpCapture(free_port())
    controller = Controller(capture, hostname="127.0.0.1", port=capture.port, ready_timeout=5)
    controller.start()
    yield capture
    controller.stop()
