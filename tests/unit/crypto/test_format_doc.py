"""Tests that docs/FORMAT.md and docs/bkd1_decrypt.py agree with the BKD1 implementation.

The standalone script is an independent reading of the format: if it decrypts what the
Encryptor writes and the golden files, and refuses damaged files, the docs describe the
format that backupd really writes.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backupd.crypto import bkd1
from backupd.crypto.bkd1 import HEADER_SIZE, TAG_SIZE, Encryptor
from backupd.crypto.keyring import MasterKey

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
SCRIPT = DOCS / "bkd1_decrypt.py"
GOLDEN = Path(__file__).parent / "golden"
KEY = MasterKey.from_secret("doc", bytes(range(7, 39)))


class _Sink:
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buf.write(data)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


def encrypt(plain: bytes, log2: int = 16) -> bytes:
    sink = _Sink()
    enc = Encryptor(sink, KEY, log2)
    enc.write(plain)
    enc.finish()
    return sink.buf.getvalue()


def run_script(key: Path, src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(key), str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "doc.key"
    path.write_text(KEY.secret.hex() + "\n")  # the script accepts the hex form too
    return path


@pytest.mark.timeout(60)
def test_script_decrypts_encryptor_output(tmp_path: Path, key_file: Path) -> None:
    plain = b"".join(b"row %d: %s\n" % (i, str(i * i).encode()) for i in range(40_000))
    assert len(plain) > 3 * (1 << 16)  # several default-size chunks
    src, out = tmp_path / "dump.sql.bkd", tmp_path / "dump.sql"
    src.write_bytes(encrypt(plain))
    result = run_script(key_file, src, out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == plain
    assert not Path(f"{out}.tmp").exists()


@pytest.mark.timeout(60)
def test_script_decrypts_golden_files(tmp_path: Path) -> None:
    meta = json.loads((GOLDEN / "cases.json").read_text())
    for case in meta["cases"]:
        out = tmp_path / case["name"]
        result = run_script(GOLDEN / meta["key_file"], GOLDEN / case["ciphertext"], out)
        assert result.returncode == 0, (case["name"], result.stderr)
        assert out.read_bytes() == (GOLDEN / case["plaintext"]).read_bytes()


def _damage(blob: bytes, how: str) -> bytes:
    segment = (1 << 12) + TAG_SIZE
    if how == "flip-last-byte":
        return blob[:-1] + bytes([blob[-1] ^ 1])
    if how == "flip-salt":
        return blob[:40] + bytes([blob[40] ^ 0x80]) + blob[41:]
    if how == "drop-final-chunk":
        return blob[: HEADER_SIZE + 2 * segment]
    if how == "trailing":
        return blob + b"\0"
    if how == "swap":
        body = blob[HEADER_SIZE:]
        return blob[:HEADER_SIZE] + body[segment : 2 * segment] + body[:segment] + body[2 * segment :]
    if how == "not-bkd1":
        return b"PGDMP" + blob[5:]
    raise AssertionError(how)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "how", ["flip-last-byte", "flip-salt", "drop-final-chunk", "trailing", "swap", "not-bkd1"]
)
def test_script_refuses_tampered_file(tmp_path: Path, key_file: Path, how: str) -> None:
    blob = encrypt(bytes(range(256)) * 48, log2=12)  # exactly three full 4 KiB chunks
    src, out = tmp_path / "x.bkd", tmp_path / "x"
    src.write_bytes(_damage(blob, how))
    result = run_script(key_file, src, out)
    assert result.returncode != 0 and "bkd1_decrypt:" in result.stderr
    assert not out.exists() and not Path(f"{out}.tmp").exists()


@pytest.mark.timeout(60)
def test_script_refuses_wrong_key(tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(bytes(32))
    src, out = tmp_path / "x.bkd", tmp_path / "x"
    src.write_bytes(encrypt(b"data"))
    result = run_script(other, src, out)
    assert result.returncode == 1 and KEY.key_id.hex() in result.stderr and not out.exists()


# --- FORMAT.md ---------------------------------------------------------------------------------
HEADER_FIELDS = [
    "magic",
    "version",
    "alg",
    "chunk_log2",
    "flags",
    "key_id",
    "salt",
    "nonce_prefix",
    "reserved",
]
SIDECAR_FIELDS = [
    "format_version", "job", "execution_id", "database", "key", "source", "created_at", "size", "sha256",
    "plaintext_size", "plaintext_sha256", "compression", "encryption", "tool", "backupd_version",
]  # fmt: skip


@pytest.mark.timeout(10)
def test_format_doc_header_table_matches_implementation() -> None:
    text = (DOCS / "FORMAT.md").read_text()
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\w+)\s*\|", text, re.MULTILINE)
    assert [name for _, _, name in rows] == HEADER_FIELDS
    offset = 0
    for start, size, name in rows:
        assert int(start) == offset, name
        offset += int(size)
    assert offset == HEADER_SIZE == bkd1._HEADER.size
    assert "42 4B 44 31 00 0D 0A 1A" in text and bytes.fromhex("424B4431000D0A1A") == bkd1.MAGIC
    for label in (bkd1.PAYLOAD_INFO.decode(), "backupd/v1/key-id"):
        assert f"`{label}`" in text


@pytest.mark.timeout(10)
def test_format_doc_lists_every_sidecar_field() -> None:
    text = (DOCS / "FORMAT.md").read_text()
    documented = re.findall(r"^\|\s*`(\w+)`\s*\|", text, re.MULTILINE)
    assert documented == SIDECAR_FIELDS
    for sub in ("engine_version", "databases", "exit_code", '"format": "BKD1"', "key_id"):
        assert sub in text


@pytest.mark.timeout(10)
def test_format_doc_sidecar_fields_match_the_sidecar_struct() -> None:
    import msgspec

    sidecar = pytest.importorskip("backupd.domain.sidecar")
    assert {f.name for f in msgspec.structs.fields(sidecar.Sidecar)} == set(SIDECAR_FIELDS)
