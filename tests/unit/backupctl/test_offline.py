"""Tests for backupctl's offline commands: key generate, decrypt, inspect."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backupctl.offline import add_offline_commands
from backupd.crypto.bkd1 import HEADER_SIZE, TAG_SIZE, Encryptor
from backupd.crypto.keyring import MasterKey, load_key_file

C = 1 << 12


def make_parser(global_json: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backupctl")
    if global_json:
        parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="command")
    add_offline_commands(sub)
    return parser


def run(
    argv: list[str], capsys: pytest.CaptureFixture[str], global_json: bool = False
) -> tuple[int, str, str]:
    args = make_parser(global_json).parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


class FileSink:
    def __init__(self, path: Path) -> None:
        self.f = path.open("wb")

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def finish(self) -> None:
        self.f.close()

    def abort(self) -> None:
        self.f.close()


def encrypt_to(path: Path, plain: bytes, key_path: Path, log2: int = 12) -> None:
    key = MasterKey.from_secret("k", load_key_file(key_path))
    enc = Encryptor(FileSink(path), key, log2)
    enc.write(plain)
    enc.finish()


@pytest.fixture
def key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "main.key"
    code, _, _ = run(["key", "generate", str(path)], capsys)
    assert code == 0
    return path


PLAIN = b"".join(b"INSERT INTO t VALUES (%d);\n" % i for i in range(2000))


# --- key generate ----------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_key_generate_prints_key_id_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.key"
    code, out, _ = run(["key", "generate", str(path)], capsys)
    key = MasterKey.from_secret("k", load_key_file(path))
    assert code == 0 and out == key.key_id_hex + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    code, out, err = run(["key", "generate", str(path)], capsys)
    assert code == 1 and out == "" and err.startswith("backupctl: key generate: ") and "already exists" in err
    assert path.read_bytes() == before


@pytest.mark.timeout(10)
def test_key_generate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.key"
    code, out, _ = run(["key", "generate", str(path), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["path"] == str(path)
    assert doc["key_id"] == MasterKey.from_secret("k", load_key_file(path)).key_id_hex


@pytest.mark.timeout(10)
def test_key_without_action_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["key"], capsys)
    assert code == 2 and "action" in err


# --- decrypt ---------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_generate_encrypt_decrypt_round_trip(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "app_20250101T000000Z_1.sql.zst.bkd"
    encrypt_to(src, PLAIN, key_path)
    code, out, err = run(["decrypt", str(src), "--key", str(key_path)], capsys)
    dest = tmp_path / "app_20250101T000000Z_1.sql.zst"
    assert code == 0, err
    assert dest.read_bytes() == PLAIN and str(dest) in out
    assert dest.stat().st_mode & 0o777 == 0o600


@pytest.mark.timeout(10)
def test_decrypt_json_and_key_choice(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.key"
    run(["key", "generate", str(other)], capsys)
    src, dest = tmp_path / "x.bkd", tmp_path / "plain.out"
    encrypt_to(src, PLAIN, key_path)
    argv = ["decrypt", str(src), "--key", str(other), "--key", str(key_path), "-o", str(dest), "--json"]
    code, out, _ = run(argv, capsys)
    doc = json.loads(out)
    key_id = MasterKey.from_secret("k", load_key_file(key_path)).key_id_hex
    assert code == 0 and doc["size"] == len(PLAIN) and doc["key_id"] == key_id and doc["output"] == str(dest)
    assert dest.read_bytes() == PLAIN


@pytest.mark.timeout(10)
def test_decrypt_refuses_existing_output_unless_forced(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dest = tmp_path / "x.bkd", tmp_path / "x"
    encrypt_to(src, PLAIN, key_path)
    dest.write_bytes(b"keep")
    code, _, err = run(["decrypt", str(src), "--key", str(key_path)], capsys)
    assert code == 1 and "--force" in err and dest.read_bytes() == b"keep"
    code, _, _ = run(["decrypt", str(src), "--key", str(key_path), "--force"], capsys)
    assert code == 0 and dest.read_bytes() == PLAIN


@pytest.mark.timeout(10)
def test_failed_decrypt_exits_1_with_typed_message_and_no_output(
    tmp_path: Path, key_path: Path, capsys
) -> None:
    src = tmp_path / "x.bkd"
    encrypt_to(src, PLAIN, key_path)  # about 50 KiB: a dozen 4 KiB chunks
    blob = bytearray(src.read_bytes())
    blob[HEADER_SIZE + 3 * (C + TAG_SIZE) + 100] ^= 0x04
    src.write_bytes(bytes(blob))
    code, out, err = run(["decrypt", str(src), "--key", str(key_path)], capsys)
    assert code == 1 and out == ""
    assert err == "backupctl: decrypt: authentication failed at chunk 3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.key", "x.bkd"]


@pytest.mark.timeout(10)
def test_failed_decrypt_json_error(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.bkd"
    encrypt_to(src, PLAIN, key_path)
    src.write_bytes(src.read_bytes()[: HEADER_SIZE + 2 * (C + TAG_SIZE)])
    code, out, err = run(["decrypt", str(src), "--key", str(key_path), "--json"], capsys)
    assert code == 1 and json.loads(out)["error"]["code"] == "truncated" and "truncated" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.timeout(10)
def test_decrypt_with_wrong_key_names_the_needed_key_id(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.key"
    run(["key", "generate", str(other)], capsys)
    src = tmp_path / "x.bkd"
    encrypt_to(src, PLAIN, key_path)
    code, _, err = run(["decrypt", str(src), "--key", str(other)], capsys)
    key_id = MasterKey.from_secret("k", load_key_file(key_path)).key_id_hex
    assert code == 1 and err == f"backupctl: decrypt: no key in the keyring has id {key_id}\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.timeout(10)
def test_decrypt_problems_with_inputs(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.bkd"
    encrypt_to(src, PLAIN, key_path)
    code, _, err = run(["decrypt", str(tmp_path / "missing.bkd"), "--key", str(key_path)], capsys)
    assert code == 1 and "missing.bkd" in err
    key_path.chmod(0o644)
    code, _, err = run(["decrypt", str(src), "--key", str(key_path)], capsys)
    assert code == 1 and "mode 0644" in err and not (tmp_path / "x").exists()
    key_path.chmod(0o600)
    plain_name = tmp_path / "x.sql"
    plain_name.write_bytes(b"")
    code, _, err = run(["decrypt", str(plain_name), "--key", str(key_path)], capsys)
    assert code == 2 and "-o" in err


@pytest.mark.timeout(10)
def test_decrypt_requires_a_key(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        make_parser().parse_args(["decrypt", str(tmp_path / "x.bkd")])
    assert info.value.code == 2


# --- inspect ---------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_inspect_shows_header_and_key_id(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.bkd"
    encrypt_to(src, PLAIN, key_path)
    key_id = MasterKey.from_secret("k", load_key_file(key_path)).key_id_hex
    code, out, _ = run(["inspect", str(src)], capsys)
    assert code == 0 and key_id in out and "AES-256-GCM" in out and "4096 (2^12)" in out
    assert f"decrypted size: {len(PLAIN)}" in " ".join(out.split())
    code, out, _ = run(["inspect", str(src), "--json"], capsys)
    doc = json.loads(out)
    assert doc["key_id"] == key_id and doc["chunk_log2"] == 12 and doc["decrypted_size"] == len(PLAIN)
    assert doc["chunks"] == -(-len(PLAIN) // C) and doc["sidecar"] is None


@pytest.mark.timeout(10)
def test_inspect_reads_sidecar_and_checks_it(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.sql.zst.bkd"
    encrypt_to(src, PLAIN, key_path)
    key_id = MasterKey.from_secret("k", load_key_file(key_path)).key_id_hex
    sidecar = {
        "format_version": 1,
        "job": "nightly",
        "execution_id": 7,
        "database": "app",
        "size": src.stat().st_size,
        "encryption": {"format": "BKD1", "key_id": key_id},
        "tool": {"name": "pg_dump", "version": "16.4", "exit_code": 0},
    }
    Path(f"{src}.meta.json").write_text(json.dumps(sidecar))
    code, out, _ = run(["inspect", str(src)], capsys)
    assert code == 0 and "nightly" in out and "pg_dump" in out and "MISMATCH" not in out
    sidecar["size"] += 1
    Path(f"{src}.meta.json").write_text(json.dumps(sidecar))
    code, out, _ = run(["--json", "inspect", str(src)], capsys, global_json=True)
    doc = json.loads(out)
    assert doc["sidecar"]["job"] == "nightly"
    assert doc["sidecar_checks"] == {"size_matches": False, "key_id_matches": True}


@pytest.mark.timeout(10)
def test_inspect_flags_impossible_length_and_bad_files(
    tmp_path: Path, key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "x.bkd"
    encrypt_to(src, PLAIN, key_path)
    src.write_bytes(src.read_bytes()[: HEADER_SIZE + C + TAG_SIZE + 5])
    code, out, _ = run(["inspect", str(src), "--json"], capsys)
    assert code == 0 and json.loads(out)["length_consistent"] is False
    (tmp_path / "plain.sql").write_bytes(b"-- not encrypted\n" * 10)
    code, out, err = run(["inspect", str(tmp_path / "plain.sql")], capsys)
    assert code == 1 and err.startswith("backupctl: inspect: not a BKD1 file")


@pytest.mark.timeout(30)
def test_importing_offline_commands_does_not_load_cryptography() -> None:
    code = "import sys, backupctl.offline; print('cryptography' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert result.stdout.strip() == "False"
