"""Protocol helpers: nesting depth is measured without recursion and ignores strings."""

from __future__ import annotations

from backupd.ipc.protocol import MAX_DEPTH, encode, nesting_depth


def test_nesting_depth() -> None:
    assert nesting_depth(b'{"a": [1, 2]}') <= MAX_DEPTH
    assert nesting_depth(b"[" * 100 + b"]" * 100) > MAX_DEPTH
    assert nesting_depth(b'{"s": "' + b"[" * 1000 + b'"}') == 1  # brackets inside a string
    assert nesting_depth(b'{"s": "\\"' + b"{" * 1000 + b'"}') == 1  # an escaped quote stays in the string


def test_encode_is_one_line() -> None:
    frame = encode({"id": 1, "ok": True, "result": {"text": "a\nb"}})
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
