"""Apprise channel against real local endpoints: SMTP (aiosmtpd) and HTTP (json://)."""

from __future__ import annotations

import email
import json
from email.message import Message

import pytest

from backupd.errors import NotifyError
from backupd.notify.apprise_channel import AppriseNotifier
from backupd.notify.events import Event

TOKEN = "Zq7Tk2PLw9xVb3NcR8sD"


def _plain_text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no text/plain part")


@pytest.mark.timeout(15)
def test_mailto_reaches_a_plain_smtp_server(smtp_server):
    # mailto:// (not mailtos://) speaks plain SMTP: no STARTTLS, no login, port as given.
    url = f"mailto://127.0.0.1:{smtp_server.port}?from=backupd@example.org&to=ops@example.org"
    channel = AppriseNotifier("mail", [url], timeout=5)
    channel.send(Event("backup.failed", "dump of 'app' failed", job="nightly-pg", execution_id=7))
    assert smtp_server.arrived.wait(5)
    [(sender, recipients, raw)] = smtp_server.messages
    assert sender == "backupd@example.org"
    assert recipients == ["ops@example.org"]
    message = email.message_from_bytes(raw)
    assert message["Subject"].endswith("backup.failed nightly-pg (execution 7)")
    text = _plain_text(message)
    assert "dump of 'app' failed" in text
    assert "job: nightly-pg" in text
    assert "execution: 7" in text


@pytest.mark.timeout(15)
def test_json_url_reaches_a_local_http_server(http_recorder):
    url = f"json://127.0.0.1:{http_recorder.port}/apprise/{TOKEN}"
    channel = AppriseNotifier("chat", [url], timeout=5)
    channel.send(Event("backup.partial", "offsite failed", job="nightly-pg", execution_id=8))
    [req] = http_recorder.wait_for(1)
    assert req.method == "POST"
    assert req.path == f"/apprise/{TOKEN}"
    payload = json.loads(req.body)
    assert payload["title"].endswith("backup.partial nightly-pg (execution 8)")
    assert payload["message"].startswith("offsite failed")
    assert payload["type"] == "warning"


@pytest.mark.timeout(15)
def test_failed_delivery_raises_without_the_token(http_recorder):
    http_recorder.statuses = [500]
    url = f"json://127.0.0.1:{http_recorder.port}/apprise/{TOKEN}"
    channel = AppriseNotifier("chat", [url], timeout=5)
    with pytest.raises(NotifyError) as info:
        channel.send(Event("backup.failed", "boom", job="j"))
    assert "Apprise URL(s) failed" in str(info.value)
    assert TOKEN not in str(info.value)
    assert http_recorder.requests, "the server was never reached"


@pytest.mark.timeout(15)
def test_urls_file_is_read(http_recorder, tmp_path):
    urls_file = tmp_path / "apprise.urls"
    urls_file.write_text(f"# ops chat\n\njson://127.0.0.1:{http_recorder.port}/from-file/{TOKEN}\n")
    from backupd.config.model import AppriseChannel

    channel = AppriseNotifier.from_config("chat", AppriseChannel(urls_file=str(urls_file), timeout=5))
    channel.send(Event("test", "hello"))
    [req] = http_recorder.wait_for(1)
    assert req.path == f"/from-file/{TOKEN}"
    assert TOKEN not in channel.describe()
