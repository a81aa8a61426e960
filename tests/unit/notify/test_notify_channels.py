"""Channel construction, request building and redaction, without any network."""

from __future__ import annotations

import hashlib
import hmac
import json

import apprise
import pytest

from backupd.config.model import AppriseChannel, PingChannel, WebhookChannel
from backupd.errors import ConfigError, SecretError
from backupd.notify import redact_text, redact_url, url_secrets
from backupd.notify.apprise_channel import AppriseNotifier, notify_type, read_urls_file
from backupd.notify.dispatcher import build_channels
from backupd.notify.events import DEFAULT_EVENTS, Event
from backupd.notify.ping import PingNotifier
from backupd.notify.webhook import WebhookNotifier, sign, verify_signature

pytestmark = pytest.mark.timeout(10)

SECRET = "hmac-secret-value-0123"
TG_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


# --- redaction -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.org/services/T000/B000/XXXXSECRET", "https://hooks.example.org/***"),
        ("https://user:pw@example.org:8443/x?token=abc", "https://example.org:8443/***"),
        ("https://example.org", "https://example.org"),
        ("mailtos://me:app-password@smtp.example.org?to=a@b.c", "mailtos://smtp.example.org/***"),
        (f"tgram://{TG_TOKEN}/12345", "tgram://***"),
        ("ntfy://my-private-topic-name", "ntfy://***"),
        ("discord://1234567890/webhooktokenvalue", "discord://***"),
        ("http://[::1]:9/x", "http://[::1]:9/***"),
        ("not a url", "***"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_masks_secrets_and_urls():
    url = "json://hooks.example.org/path/tok3n-value-here?key=supersecretvalue"
    text = f"failed posting to {url}: server said supersecretvalue was wrong; also {SECRET}"
    masked = redact_text(text, url_secrets(url) | {SECRET})
    assert "tok3n-value-here" not in masked
    assert "supersecretvalue" not in masked
    assert SECRET not in masked
    assert "json://hooks.example.org/***" in masked


def test_url_secrets_covers_token_pieces_but_not_a_real_host():
    pieces = url_secrets(f"tgram://{TG_TOKEN}/12345678")
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" in pieces
    assert "hooks.example.org" not in url_secrets("https://hooks.example.org/abcdefgh")
    assert "abcdefgh" in url_secrets("https://hooks.example.org/abcdefgh")


# --- webhook ---------------------------------------------------------------------------
def test_webhook_signature_matches_the_documented_scheme():
    channel = WebhookNotifier("ops", "https://hooks.example.org/in", secret=SECRET)
    event = Event("backup.failed", "boom", job="j", execution_id=1)
    body = channel.body(event)
    headers = channel.headers(event, body, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Backupd-Signature"] == f"sha256={expected}"
    assert headers["X-Backupd-Timestamp"] == "1700000000"
    assert headers["X-Backupd-Event"] == "backup.failed"
    payload = json.loads(body)
    assert payload["source"] == "backupd"
    assert payload["kind"] == "backup.failed"
    # Retrying the same event must keep the delivery id; another event gets another one.
    assert channel.headers(event, body, 1_700_000_005)["X-Backupd-Delivery"] == headers["X-Backupd-Delivery"]
    other = channel.body(Event("backup.failed", "other"))
    assert channel.headers(event, other, 1)["X-Backupd-Delivery"] != headers["X-Backupd-Delivery"]


def test_verify_signature_rejects_tampering_and_old_timestamps():
    body = b'{"kind":"test"}'
    now = 1_700_000_000
    good = sign(SECRET.encode(), now, body)
    assert verify_signature(SECRET.encode(), str(now), body, good, now=now + 10)
    assert not verify_signature(SECRET.encode(), str(now), body + b" ", good, now=now)
    assert not verify_signature(b"other", str(now), body, good, now=now)
    assert not verify_signature(SECRET.encode(), str(now + 1), body, good, now=now)
    assert not verify_signature(SECRET.encode(), str(now), body, good, now=now + 301)
    assert not verify_signature(SECRET.encode(), "soon", body, good, now=now)


def test_webhook_describe_and_redact_hide_the_secret():
    channel = WebhookNotifier("ops", "https://hooks.example.org/in/abcdef123456", secret=SECRET)
    assert channel.describe() == "webhook https://hooks.example.org/*** (signed, timeout 10s)"
    assert SECRET not in channel.redact(f"bad signature {SECRET}")
    assert "abcdef123456" not in channel.redact("posting to /in/abcdef123456 failed")


def test_webhook_refuses_non_http_urls():
    with pytest.raises(ConfigError, match=r"notifications\.ops\.url"):
        WebhookNotifier("ops", "file:///etc/passwd")


def test_webhook_from_config_reads_the_secret_file(tmp_path):
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET + "\n")
    config = WebhookChannel(url="https://h.example.org/x", secret_file=str(secret_file), events=["failed"])
    channel = WebhookNotifier.from_config("ops", config)
    body = channel.body(Event("backup.failed", "x"))
    sig = channel.headers(Event("backup.failed", "x"), body, 5)["X-Backupd-Signature"]
    assert sig == sign(SECRET.encode(), 5, body)  # trailing newline stripped
    assert channel.events == {"backup.failed", "restore.failed", "integrity.failed", "reload.failed"}


# --- ping ------------------------------------------------------------------------------
def test_ping_targets_and_defaults():
    ping = PingNotifier("hc", "https://hc.example.org/uuid-token-1234")
    assert ping.target("backup.succeeded") == "https://hc.example.org/uuid-token-1234"
    assert ping.target("test") == "https://hc.example.org/uuid-token-1234"
    assert ping.target("backup.failed") == "https://hc.example.org/uuid-token-1234/fail"
    assert ping.target("backup.partial") == "https://hc.example.org/uuid-token-1234/fail"
    assert ping.target("backup.started") is None
    assert ping.events == {"backup.succeeded", "backup.partial", "backup.failed"}
    with_start = PingNotifier("hc", "https://hc.example.org/u", start_url="https://hc.example.org/u/start")
    assert "backup.started" in with_start.events
    assert with_start.target("backup.started") == "https://hc.example.org/u/start"
    custom = PingNotifier(
        "hc",
        "https://x.example.org/a",
        success_url="https://x.example.org/ok",
        fail_url="https://x.example.org/ko",
    )
    assert custom.target("backup.succeeded") == "https://x.example.org/ok"
    assert custom.target("integrity.failed") == "https://x.example.org/ko"


def test_ping_body_is_short_and_describe_is_redacted():
    ping = PingNotifier("hc", "https://hc.example.org/uuid-token-1234")
    body = ping.body(Event("backup.failed", "x" * 5000, job="j"))
    assert len(body) == 1000
    assert "uuid-token-1234" not in ping.describe()
    assert "uuid-token-1234" not in ping.redact("GET https://hc.example.org/uuid-token-1234/fail: 404")


def test_ping_from_config_and_bad_method():
    channel = PingNotifier.from_config("hc", PingChannel(url="https://hc.example.org/u", method="GET"))
    assert channel.method == "GET"
    with pytest.raises(ConfigError):
        PingNotifier("hc", "https://hc.example.org/u", method="PUT")
    with pytest.raises(ConfigError, match="start_url"):
        PingNotifier("hc", "https://hc.example.org/u", start_url="ftp://x/y")


# --- apprise ---------------------------------------------------------------------------
def test_apprise_notify_types():
    assert notify_type("backup.failed") == apprise.NotifyType.FAILURE
    assert notify_type("daemon.unclean_stop") == apprise.NotifyType.FAILURE
    assert notify_type("backup.partial") == apprise.NotifyType.WARNING
    assert notify_type("backup.succeeded") == apprise.NotifyType.SUCCESS
    assert notify_type("test") == apprise.NotifyType.INFO


def test_apprise_rejects_unknown_urls_without_showing_them():
    with pytest.raises(ConfigError) as info:
        AppriseNotifier("chat", ["json://127.0.0.1:9/ok", "nosuchscheme://hidden-token-value/x"])
    assert "#2" in str(info.value)
    assert "hidden-token-value" not in str(info.value)
    with pytest.raises(ConfigError, match="no Apprise URL"):
        AppriseNotifier("chat", [])


def test_apprise_urls_file_and_describe(tmp_path):
    path = tmp_path / "urls"
    path.write_text(f"# comment\n\n  tgram://{TG_TOKEN}/12345  \njson://127.0.0.1:9/p/abcdefgh\n")
    assert read_urls_file(str(path), "x") == [f"tgram://{TG_TOKEN}/12345", "json://127.0.0.1:9/p/abcdefgh"]
    channel = AppriseNotifier.from_config("chat", AppriseChannel(urls_file=str(path), timeout=3))
    assert channel.describe() == "apprise tgram://***, json://127.0.0.1:9/*** (timeout 3s)"
    assert channel.events == DEFAULT_EVENTS
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in channel.redact(
        f"failed: tgram://{TG_TOKEN}/12345 said no"
    )


# --- build_channels --------------------------------------------------------------------
def test_build_channels_builds_each_type(tmp_path):
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    channels = build_channels(
        {
            "hook": WebhookChannel(url="https://h.example.org/x", secret_file=str(secret)),
            "chat": AppriseChannel(urls=["json://127.0.0.1:9/x"], events=["all"]),
            "hc": PingChannel(url="https://hc.example.org/u", timeout=2),
        }
    )
    assert {name: c.kind for name, c in channels.items()} == {
        "hook": "webhook",
        "chat": "apprise",
        "hc": "ping",
    }
    assert channels["hc"].timeout == 2
    assert "backup.succeeded" in channels["chat"].events


def test_build_channels_reports_bad_filters_and_missing_secrets(tmp_path):
    with pytest.raises(ConfigError, match=r"notifications\.hook\.events: .*'fail'"):
        build_channels({"hook": WebhookChannel(url="https://h.example.org/x", events=["fail"])})
    with pytest.raises(SecretError, match="does not exist"):
        build_channels(
            {"hook": WebhookChannel(url="https://h.example.org/x", secret_file=str(tmp_path / "none"))}
        )
