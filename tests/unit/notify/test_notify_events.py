"""Event kinds, the Event record and the channel events filter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from backupd.notify import events as ev
from backupd.notify.events import (
    DEFAULT_EVENTS,
    EVENT_KINDS,
    Event,
    expand_event_filter,
    validate_event_filter,
)

pytestmark = pytest.mark.timeout(10)


def test_event_kinds_are_the_documented_ones():
    assert set(EVENT_KINDS) == {
        "backup.started",
        "backup.succeeded",
        "backup.partial",
        "backup.failed",
        "restore.succeeded",
        "restore.failed",
        "integrity.failed",
        "retention.skipped",
        "reload.failed",
        "daemon.unclean_stop",
        "test",
    }


def test_event_defaults_and_json():
    before = datetime.now(UTC)
    event = Event("backup.failed", "boom", job="j", execution_id=3, status="failed", fields={"step": "dump"})
    assert before <= event.time <= datetime.now(UTC)
    assert event.time.tzinfo is UTC
    data = event.to_json_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"kind", "message", "job", "execution_id", "status", "fields", "time"}
    assert data["fields"] == {"step": "dump"}
    assert data["time"].endswith("Z")


def test_event_time_is_normalised_to_utc():
    naive = Event("test", "x", time=datetime(2024, 5, 1, 12, 0, 0))
    assert naive.to_json_dict()["time"] == "2024-05-01T12:00:00Z"
    plus2 = Event("test", "x", time=datetime(2024, 5, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2))))
    assert plus2.to_json_dict()["time"] == "2024-05-01T12:00:00Z"


def test_event_fields_are_a_read_only_copy():
    source = {"size": 1}
    event = Event("backup.succeeded", "ok", fields=source)
    source["size"] = 2
    assert event.fields["size"] == 1
    with pytest.raises(TypeError):
        event.fields["size"] = 3  # type: ignore[index]


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match=r"backup\.exploded"):
        Event("backup.exploded", "x")


def test_title_and_text_carry_the_facts():
    event = Event("backup.failed", "dump failed", job="nightly", execution_id=9, fields={"step": "dump"})
    assert event.title() == f"{ev.hostname()}: backup.failed nightly (execution 9)"
    text = event.text()
    assert text.startswith("dump failed\n")
    for line in ("job: nightly", "execution: 9", "step: dump", f"host: {ev.hostname()}"):
        assert line in text.splitlines()


def test_default_filter_is_problems_only():
    assert expand_event_filter([]) == DEFAULT_EVENTS
    assert "backup.failed" in DEFAULT_EVENTS
    assert "backup.partial" in DEFAULT_EVENTS
    assert "daemon.unclean_stop" in DEFAULT_EVENTS
    assert "retention.skipped" in DEFAULT_EVENTS
    for quiet in ("backup.succeeded", "restore.succeeded", "backup.started", "test"):
        assert quiet not in DEFAULT_EVENTS


def test_short_forms_expand():
    assert expand_event_filter(["failed"]) == {
        "backup.failed",
        "restore.failed",
        "integrity.failed",
        "reload.failed",
    }
    assert expand_event_filter(["succeeded"]) == {"backup.succeeded", "restore.succeeded"}
    assert expand_event_filter(["partial"]) == {"backup.partial"}
    assert expand_event_filter(["started", "backup.succeeded"]) == {"backup.started", "backup.succeeded"}
    assert expand_event_filter(["all"]) == set(EVENT_KINDS) - {"test"}


def test_unknown_filter_words_are_rejected_with_the_allowed_list():
    validate_event_filter(["failed", "backup.partial", "problems"])
    with pytest.raises(ValueError) as info:
        validate_event_filter(["failed", "fialed", "backup.*"])
    message = str(info.value)
    assert "'fialed'" in message
    assert "'backup.*'" in message
    assert "allowed:" in message
    assert "backup.failed" in message
    assert "succeeded" in message
    # "test" is always delivered and so is no filter word.
    with pytest.raises(ValueError):
        validate_event_filter(["test"])
