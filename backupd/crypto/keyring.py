"""Master keys for BKD1: reading and creating key files, and the keyring that finds keys by id.

A master key is 32 secret bytes. Its public *key id* is the first 16 bytes of
HMAC-SHA256(key, ``backupd/v1/key-id``); every BKD1 header carries it, so a reader can pick
the right key from several (old keys stay in the config as ``decrypt_only``).

Key file format: exactly 32 raw bytes, or the same 32 bytes written as 64 hexadecimal
characters with an optional trailing newline. The lengths cannot be confused (32 vs 64/65),
and the hex form lets an administrator keep the key in a password manager or paste it into
``systemd-creds``. :func:`generate_key_file` always writes the raw form.

A key file must be a regular file owned by the reading user and not readable by group or
others; anything else is refused rather than used, because a key that other users could
read protects nothing. Keys delivered as systemd credentials skip those two checks: systemd
itself creates ``$CREDENTIALS_DIRECTORY`` per service, readable only by the service's user,
and picks the files' owner and mode (often root-owned, 0400 or 0440, while the service runs
as another user), so the owner and mode there say nothing about who else can read them.

This module only needs the standard library, so the offline tools can import it cheaply.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backupd.config.secrets import credentials_dir, read_secret_bytes
from backupd.errors import CryptoError, KeyFileError, UnknownKey

if TYPE_CHECKING:
    from backupd.config.model import EncryptionKeyConfig

KEY_SIZE = 32
KEY_ID_SIZE = 16
KEY_ID_LABEL = b"backupd/v1/key-id"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# Anything longer than the hex form plus CRLF is certainly not a key; stop reading there.
_MAX_KEY_FILE_READ = 2 * KEY_SIZE + 2


def key_id_of(secret: bytes) -> bytes:
    """Given a 32-byte master key, return its 16-byte public key id."""
    return hmac.new(secret, KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_SIZE]


@dataclass(frozen=True)
class MasterKey:
    """One named master key. ``secret`` is excluded from repr so it never reaches logs."""

    name: str
    secret: bytes = field(repr=False)
    key_id: bytes
    decrypt_only: bool = False

    def __post_init__(self) -> None:
        """Given the fields, check the secret's length and that ``key_id`` belongs to it."""
        if len(self.secret) != KEY_SIZE:
            raise CryptoError(reason=f"key {self.name!r} is {len(self.secret)} bytes, not {KEY_SIZE}")
        if not hmac.compare_digest(self.key_id, key_id_of(self.secret)):
            raise CryptoError(reason=f"key {self.name!r}: key id does not match the secret")

    @classmethod
    def from_secret(cls, name: str, secret: bytes, decrypt_only: bool = False) -> MasterKey:
        """Given a name and 32 secret bytes, return the MasterKey with its key id computed."""
        if len(secret) != KEY_SIZE:
            raise CryptoError(reason=f"key {name!r} is {len(secret)} bytes, not {KEY_SIZE}")
        return cls(name=name, secret=secret, key_id=key_id_of(secret), decrypt_only=decrypt_only)

    @property
    def key_id_hex(self) -> str:
        """Return the key id as 32 lowercase hex digits (as shown in sidecars and by inspect)."""
        return self.key_id.hex()


def parse_key_bytes(data: bytes, where: str) -> bytes:
    """Given a key file's content, return the 32-byte key; raise KeyFileError naming ``where``.

    Accepted: 32 raw bytes, or 64 hex digits optionally followed by ``\\n`` or ``\\r\\n``.
    """
    if len(data) == KEY_SIZE:
        return data
    text = data.removesuffix(b"\n").removesuffix(b"\r")
    if len(text) == 2 * KEY_SIZE and all(b in _HEX_DIGITS for b in text):
        return bytes.fromhex(text.decode("ascii"))
    # Never echo the content: a near-miss may still be most of a real key.
    raise KeyFileError(
        path=where,
        reason=f"is {len(data)} bytes; expected {KEY_SIZE} raw bytes or {2 * KEY_SIZE} hex digits",
    )


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Given a key file's path, check ownership and mode and return the 32-byte key.

    Raise KeyFileError if the file is missing, not a regular file, owned by a user other than
    the effective uid, readable or writable by group or others, or of the wrong length.
    """
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise KeyFileError(path=where, reason="does not exist") from None
    except PermissionError:
        raise KeyFileError(path=where, reason=f"is not readable by uid {os.geteuid()}") from None
    except OSError as exc:
        raise KeyFileError(path=where, reason=exc.strerror or str(exc)) from None
    try:
        # Check the opened file, not the name, so a swap between check and read cannot slip by.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path=where, reason="is not a regular file")
        uid = os.geteuid()
        if st.st_uid != uid:
            raise KeyFileError(
                path=where, reason=f"is owned by uid {st.st_uid}, not by the reader (uid {uid})"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                path=where,
                reason=f"is accessible by group or others (mode {mode:04o}); run: chmod 600 {where}",
            )
        data = b""
        while len(data) <= _MAX_KEY_FILE_READ:
            piece = os.read(fd, _MAX_KEY_FILE_READ + 1 - len(data))
            if not piece:
                break
            data += piece
    except OSError as exc:
        raise KeyFileError(path=where, reason=exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    return parse_key_bytes(data, where)


def generate_key_file(path: str | os.PathLike[str]) -> bytes:
    """Given a path whose parent exists, create a new random key there (mode 0600), return its key id.

    Raise KeyFileError if the path already exists (a key is never overwritten) or cannot be
    created or written; a partly written file is removed.
    """
    where = os.fspath(path)
    secret = os.urandom(KEY_SIZE)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(where, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(path=where, reason="already exists; refusing to overwrite a key") from None
    except FileNotFoundError:
        raise KeyFileError(path=where, reason="its directory does not exist") from None
    except OSError as exc:
        raise KeyFileError(path=where, reason=exc.strerror or str(exc)) from None
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may only remove bits; make the mode exact anyway
            view = memoryview(secret)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(Path(where).parent)
    except OSError as exc:
        Path(where).unlink(missing_ok=True)
        raise KeyFileError(path=where, reason=exc.strerror or str(exc)) from None
    return key_id_of(secret)


def _fsync_dir(directory: Path) -> None:
    """Given a directory, fsync it so a new entry in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Keyring:
    """The master keys a process knows, found by config name (to encrypt) or key id (to decrypt)."""

    def __init__(self, keys: Iterable[MasterKey]) -> None:
        """Given master keys with distinct names, build the keyring; raise CryptoError on a repeated name."""
        self._by_name: dict[str, MasterKey] = {}
        self._by_id: dict[bytes, MasterKey] = {}
        for key in keys:
            if key.name in self._by_name:
                raise CryptoError(reason=f"two keys are named {key.name!r}")
            self._by_name[key.name] = key
            # Two names for the same secret are harmless: either decrypts.
            self._by_id.setdefault(key.key_id, key)

    @classmethod
    def from_config(cls, encryption: Mapping[str, EncryptionKeyConfig]) -> Keyring:
        """Given the config's ``[encryption.*]`` tables, read every key and return the keyring.

        Raise KeyFileError for a bad key file or credential content, SecretError for a
        credential that cannot be read.
        """
        keys = []
        for name, conf in encryption.items():
            if (conf.key_file is None) == (conf.credential is None):
                raise KeyFileError(
                    path=f"encryption.{name}", reason="give exactly one of key_file or credential"
                )
            if conf.key_file is not None:
                secret = load_key_file(conf.key_file)
            else:
                data = read_secret_bytes(None, conf.credential, f"encryption key {name}")
                assert data is not None  # a credential name was given, so None is impossible
                where = f"{credentials_dir()}/{conf.credential}"
                secret = parse_key_bytes(data, where)
            keys.append(MasterKey.from_secret(name, secret, decrypt_only=conf.decrypt_only))
        return cls(keys)

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> Keyring:
        """Given key file paths (the offline tools' ``--key``), load each and return the keyring.

        Each key is named by its path; raise KeyFileError for the first bad file.
        """
        keys: dict[str, MasterKey] = {}
        for path in paths:
            where = os.fspath(path)
            if where not in keys:
                keys[where] = MasterKey.from_secret(where, load_key_file(where))
        return cls(keys.values())

    def for_encryption(self, name: str) -> MasterKey:
        """Given a config key name, return that key for new backups.

        Raise UnknownKey if no key has that name, CryptoError if it is ``decrypt_only``.
        """
        key = self._by_name.get(name)
        if key is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UnknownKey(f"no encryption key named {name!r} (known: {known})", key_name=name)
        if key.decrypt_only:
            raise CryptoError(
                reason=f"key {name!r} is decrypt_only: it can restore old backups but not encrypt new ones"
            )
        return key

    def by_id(self, key_id: bytes) -> MasterKey:
        """Given a key id from a BKD1 header, return its key; raise UnknownKey (naming the hex id) if none."""
        key = self._by_id.get(bytes(key_id))
        if key is None:
            raise UnknownKey(key_id=bytes(key_id).hex())
        return key

    @property
    def keys(self) -> list[MasterKey]:
        """Return the keys in the order they were given."""
        return list(self._by_name.values())

    def __len__(self) -> int:
        """Return how many keys the keyring holds."""
        return len(self._by_name)

    def __repr__(self) -> str:
        """Return names and key ids only; secrets never appear."""
        inner = ", ".join(f"{k.name}={k.key_id_hex}" for k in self._by_name.values())
        return f"Keyring({inner})"
