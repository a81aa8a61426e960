"""The ``.meta.json`` sidecar written beside every stored object (DESIGN §6, docs/FORMAT.md).

It is the commit marker: written last, deleted first, never rewritten in place. ``sha256``
is of the stored bytes, so it can be checked without keys.
"""

from __future__ import annotations

import msgspec

FORMAT_VERSION = 1


class SourceMeta(msgspec.Struct, kw_only=True):
    type: str
    engine_version: str
    databases: list[str]


class EncryptionMeta(msgspec.Struct, kw_only=True):
    format: str
    key_id: str


class ToolMeta(msgspec.Struct, kw_only=True):
    name: str
    version: str
    exit_code: int


class Sidecar(msgspec.Struct, kw_only=True):
    format_version: int = FORMAT_VERSION
    job: str
    execution_id: int
    database: str
    key: str
    source: SourceMeta
    created_at: str  # UTC, ISO 8601 with "Z"
    size: int
    sha256: str | None  # None only in sidecars of other writers: then nothing can be checked
    plaintext_size: int
    plaintext_sha256: str
    compression: str
    encryption: EncryptionMeta | None
    tool: ToolMeta
    backupd_version: str

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"


def decode_sidecar(data: bytes) -> Sidecar:
    """Given sidecar bytes, return the Sidecar; raise msgspec.ValidationError/DecodeError if
    malformed or of an unknown format_version."""
    sc = msgspec.json.decode(data, type=Sidecar)
    if sc.format_version != FORMAT_VERSION:
        raise msgspec.ValidationError(f"unsupported sidecar format_version {sc.format_version}")
    return sc
