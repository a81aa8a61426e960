"""Tests for master keys: key ids, key file checks, key generation and the keyring."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from backupd.config.model import EncryptionKeyConfig
from backupd.crypto.keyring import (
    Keyring,
    MasterKey,
    generate_key_file,
    key_id_of,
    load_key_file,
)
from backupd.errors import CryptoError, KeyFileError, SecretError, UnknownKey

GOLDEN = Path(__file__).parent / "golden"
SECRET = bytes(range(32))
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- key ids and MasterKey -------------------------------------------------------------------
@pytest.mark.timeout(5)
def test_key_id_is_truncated_hmac_and_matches_golden() -> None:
    expected = hmac.new(SECRET, b"backupd/v1/key-id", hashlib.sha256).digest()[:16]
    assert key_id_of(SECRET) == expected and len(expected) == 16
    meta = json.loads((GOLDEN / "cases.json").read_text())
    assert key_id_of((GOLDEN / meta["key_file"]).read_bytes()).hex() == meta["key_id"]


@pytest.mark.timeout(5)
def test_master_key_repr_hides_the_secret() -> None:
    key = MasterKey.from_secret("main", SECRET)
    text = repr(key) + str(key) + repr(Keyring([key]))
    assert SECRET.hex() not in text and repr(SECRET) not in text and "secret" not in text
    assert key.key_id_hex in repr(Keyring([key]))


@pytest.mark.timeout(5)
def test_master_key_validates_length_and_id() -> None:
    with pytest.raises(CryptoError, match="31 bytes"):
        MasterKey.from_secret("short", bytes(31))
    with pytest.raises(CryptoError, match="does not match"):
        MasterKey("bad", SECRET, bytes(16))


# --- load_key_file ---------------------------------------------------------------------------
@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "content",
    [SECRET, SECRET.hex().encode(), SECRET.hex().encode() + b"\n", SECRET.hex().upper().encode() + b"\r\n"],
    ids=["raw", "hex", "hex-newline", "HEX-crlf"],
)
def test_load_key_file_forms(tmp_path: Path, content: bytes) -> None:
    assert load_key_file(write_key(tmp_path / "k", content)) == SECRET


@pytest.mark.timeout(5)
@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_load_key_file_private_modes_accepted(tmp_path: Path, mode: int) -> None:
    assert load_key_file(write_key(tmp_path / "k", SECRET, mode)) == SECRET


@pytest.mark.timeout(5)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_load_key_file_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "k", SECRET, mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}") as info:
        load_key_file(path)
    assert str(path) in str(info.value) and "chmod 600" in str(info.value)


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "content", [b"", bytes(31), bytes(33), b"ab" * 31 + b"\n", b"zz" * 32, bytes(200)], ids=str
)
def test_load_key_file_refuses_wrong_length_without_echoing_content(tmp_path: Path, content: bytes) -> None:
    path = write_key(tmp_path / "k", content)
    with pytest.raises(KeyFileError, match="expected 32 raw bytes") as info:
        load_key_file(path)
    if content:
        assert content.hex() not in str(info.value) and content.decode("latin-1") not in str(info.value)


@needs_root
@pytest.mark.timeout(5)
def test_load_key_file_refuses_another_owner(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", SECRET)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(KeyFileError, match=f"owned by uid {NOBODY}"):
        load_key_file(path)


@pytest.mark.timeout(5)
def test_load_key_file_missing_and_not_regular(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(tmp_path / "missing")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key_file(tmp_path / "dir")


# --- generate_key_file -----------------------------------------------------------------------
@pytest.mark.timeout(5)
def test_generate_key_file_creates_private_random_key(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        key_id = generate_key_file(tmp_path / "a.key")
    finally:
        os.umask(old_umask)
    st = (tmp_path / "a.key").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 32 and st.st_uid == os.geteuid()
    secret = load_key_file(tmp_path / "a.key")
    assert key_id == key_id_of(secret)
    assert generate_key_file(tmp_path / "b.key") != key_id


@pytest.mark.timeout(5)
def test_generate_key_file_never_overwrites(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", SECRET)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_file(path)
    assert path.read_bytes() == SECRET
    target = write_key(tmp_path / "target", b"keep me")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(KeyFileError):
        generate_key_file(tmp_path / "link")
    assert target.read_bytes() == b"keep me"


@pytest.mark.timeout(5)
def test_generate_key_file_needs_existing_parent(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="directory does not exist"):
        generate_key_file(tmp_path / "no" / "such.key")


# --- Keyring ---------------------------------------------------------------------------------
@pytest.mark.timeout(5)
def test_keyring_lookups() -> None:
    main = MasterKey.from_secret("main", SECRET)
    old = MasterKey.from_secret("old", bytes(32), decrypt_only=True)
    ring = Keyring([main, old])
    assert ring.for_encryption("main") is main
    assert ring.by_id(old.key_id) is old and ring.by_id(main.key_id) is main
    assert len(ring) == 2 and ring.keys == [main, old]
    with pytest.raises(CryptoError, match="decrypt_only"):
        ring.for_encryption("old")
    with pytest.raises(UnknownKey, match=r"'nope'.*main, old"):
        ring.for_encryption("nope")
    with pytest.raises(UnknownKey, match="ab" * 16):
        ring.by_id(bytes.fromhex("ab" * 16))
    with pytest.raises(CryptoError, match="two keys are named"):
        Keyring([main, MasterKey.from_secret("main", bytes(32))])


@pytest.mark.timeout(5)
def test_keyring_from_files(tmp_path: Path) -> None:
    a = write_key(tmp_path / "a", SECRET)
    b = write_key(tmp_path / "b", bytes(32).hex().encode() + b"\n")
    ring = Keyring.from_files([a, b, a])
    assert len(ring) == 2 and ring.by_id(key_id_of(bytes(32))).name == str(b)
    with pytest.raises(KeyFileError):
        Keyring.from_files([a, write_key(tmp_path / "c", SECRET, 0o644)])


@pytest.mark.timeout(5)
def test_keyring_from_config_with_files_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    # systemd's own choice of owner and mode: accepted, unlike for a key file.
    cred = write_key(creds / "backup-key", bytes(32).hex().encode() + b"\n", 0o440)
    if os.geteuid() == 0:
        os.chown(cred, NOBODY, NOBODY)
        cred.chmod(0o444)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    key_file = write_key(tmp_path / "main.key", SECRET)
    ring = Keyring.from_config(
        {
            "main": EncryptionKeyConfig(key_file=str(key_file)),
            "cred": EncryptionKeyConfig(credential="backup-key", decrypt_only=True),
        }
    )
    assert ring.for_encryption("main").secret == SECRET
    assert ring.by_id(key_id_of(bytes(32))).decrypt_only


@pytest.mark.timeout(5)
def test_keyring_from_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyFileError, match="exactly one"):
        Keyring.from_config({"x": EncryptionKeyConfig()})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(SecretError, match="does not exist"):
        Keyring.from_config({"x": EncryptionKeyConfig(credential="missing")})
    write_key(tmp_path / "short", bytes(10))
    with pytest.raises(KeyFileError, match="short: is 10 bytes"):
        Keyring.from_config({"x": EncryptionKeyConfig(credential="short")})
    with pytest.raises(KeyFileError, match="mode 0644"):
        Keyring.from_config(
            {"x": EncryptionKeyConfig(key_file=str(write_key(tmp_path / "k", SECRET, 0o644)))}
        )
