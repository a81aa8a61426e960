"""The BKD1 encrypted file format (DESIGN §7): a 68-byte header, then AES-256-GCM chunks.

Layout, byte for byte (see docs/FORMAT.md)::

    0  magic "BKD1\\0\\r\\n\\x1a"   8   version = 1     9  alg = 1 (AES-256-GCM)
    10 log2 chunk size (12..24)  11  flags = 0       12 key id (16)
    28 salt (32)                 60  nonce prefix (7) 67 reserved = 0

The file key is HKDF-SHA256(master, salt, info = ``backupd/v1/payload`` ‖ header[0:12]); chunk i
is sealed with nonce prefix ‖ u32be(i) ‖ (1 if last else 0) and the whole header as AAD. Every
chunk holds exactly ``2**log2`` plaintext bytes except the final one (1..chunk bytes; 0 only
when the whole input is empty), and the file ends right after the final chunk.

The reader can tell where the file ends only by trying: a segment that ends at EOF must open
as the final chunk; a full segment with more bytes after it must open as a non-final one.
From that follow the typed errors: a verified non-final chunk followed by EOF is
:class:`Truncated`; a verified final chunk followed by bytes is :class:`TrailingData`; a
segment that opens under neither flag is :class:`AuthenticationFailed`. A cut *inside* a chunk
leaves a short segment whose tag is gone, which no reader can tell apart from an altered
final chunk, so it is reported as AuthenticationFailed (the message says so), except when too
few bytes remain to hold a tag at all (Truncated).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupd.crypto.keyring import KEY_ID_SIZE, Keyring, MasterKey
from backupd.errors import AuthenticationFailed, BadHeader, CryptoError, TrailingData, Truncated
from backupd.pipeline.streams import ByteSink

MAGIC = b"BKD1\x00\r\n\x1a"
VERSION = 1
ALG_AES_256_GCM = 1
ALG_NAMES = {ALG_AES_256_GCM: "AES-256-GCM"}
HEADER_SIZE = 68
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
DEFAULT_CHUNK_LOG2 = 16
MIN_CHUNK_LOG2 = 12
MAX_CHUNK_LOG2 = 24
MAX_CHUNKS = 2**32  # the chunk counter is a u32
PAYLOAD_INFO = b"backupd/v1/payload"
_HEADER = struct.Struct(f">8sBBBB{KEY_ID_SIZE}s{SALT_SIZE}s{NONCE_PREFIX_SIZE}sB")
assert _HEADER.size == HEADER_SIZE


@dataclass(frozen=True)
class Header:
    """A parsed BKD1 header. ``key_id``, ``salt`` and ``nonce_prefix`` are public values."""

    version: int
    alg: int
    chunk_log2: int
    flags: int
    key_id: bytes
    salt: bytes
    nonce_prefix: bytes

    @property
    def chunk_size(self) -> int:
        """Return the plaintext size of every chunk but the final one."""
        return 1 << self.chunk_log2

    def pack(self) -> bytes:
        """Return the 68 header bytes (the reserved byte is always 0)."""
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.alg,
            self.chunk_log2,
            self.flags,
            self.key_id,
            self.salt,
            self.nonce_prefix,
            0,
        )

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        """Given 68 bytes, return the Header; raise BadHeader if any field is not what version 1 allows."""
        if len(raw) < HEADER_SIZE:
            what = (
                "the file is empty" if not raw else f"only {len(raw)} bytes, the header needs {HEADER_SIZE}"
            )
            raise BadHeader(reason=what)
        magic, version, alg, log2, flags, key_id, salt, prefix, reserved = _HEADER.unpack(raw[:HEADER_SIZE])
        if magic != MAGIC:
            raise BadHeader(reason="magic bytes are not BKD1")
        if version != VERSION:
            raise BadHeader(reason=f"format version {version} (this reader knows {VERSION})")
        if alg != ALG_AES_256_GCM:
            raise BadHeader(reason=f"algorithm {alg} (this reader knows {ALG_AES_256_GCM} = AES-256-GCM)")
        if not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
            raise BadHeader(reason=f"log2 chunk size {log2} outside {MIN_CHUNK_LOG2}..{MAX_CHUNK_LOG2}")
        if flags != 0:
            raise BadHeader(reason=f"flags {flags:#04x} (none are defined)")
        if reserved != 0:
            raise BadHeader(reason=f"reserved byte is {reserved:#04x}, not 0")
        return cls(version, alg, log2, flags, key_id, salt, prefix)


@dataclass(frozen=True)
class DecryptResult:
    """What :func:`decrypt_file` verified: plaintext size, plaintext SHA-256 (hex), key id (hex)."""

    size: int
    sha256: str
    key_id: str


def read_header(f: BinaryIO) -> Header:
    """Given a stream at the start of a BKD1 file, read and return its header; raise BadHeader if invalid."""
    return Header.parse(_read_up_to(f, HEADER_SIZE))


def _read_up_to(f: BinaryIO, n: int) -> bytes:
    """Given a stream, read until ``n`` bytes or EOF (short reads from pipes are retried)."""
    parts: list[bytes] = []
    want = n
    while want > 0:
        piece = f.read(want)
        if not piece:
            break
        parts.append(piece)
        want -= len(piece)
    return b"".join(parts)


def _file_cipher(secret: bytes, header_raw: bytes) -> AESGCM:
    """Given a master key and the header bytes, derive the per-file key and return its AES-GCM cipher."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=header_raw[28:60], info=PAYLOAD_INFO + header_raw[:12]
    )
    return AESGCM(hkdf.derive(secret))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """Given the header's nonce prefix, a chunk index and the final flag, return the 12-byte nonce."""
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class Encryptor:
    """A ByteSink that writes BKD1: the header, then one sealed chunk per ``2**chunk_log2`` bytes.

    It holds at most one chunk of plaintext. A full chunk is sealed as non-final only once
    more data arrives, so ``finish`` can always seal the final chunk; ``abort`` never does,
    which leaves the output unreadable as a complete file.
    """

    def __init__(
        self,
        downstream: ByteSink,
        key: MasterKey,
        chunk_log2: int = DEFAULT_CHUNK_LOG2,
        *,
        _salt: bytes | None = None,
        _nonce_prefix: bytes | None = None,
    ) -> None:
        """Given the next stage and a master key, prepare to encrypt; raise CryptoError on bad arguments.

        ``_salt`` and ``_nonce_prefix`` exist for the golden-file tests only: repeating them
        under one key repeats the file key and nonces, which breaks AES-GCM completely.
        """
        if key.decrypt_only:
            raise CryptoError(reason=f"key {key.name!r} is decrypt_only and cannot encrypt")
        if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
            raise CryptoError(reason=f"chunk_log2 {chunk_log2} outside {MIN_CHUNK_LOG2}..{MAX_CHUNK_LOG2}")
        salt = secrets.token_bytes(SALT_SIZE) if _salt is None else _salt
        prefix = secrets.token_bytes(NONCE_PREFIX_SIZE) if _nonce_prefix is None else _nonce_prefix
        if len(salt) != SALT_SIZE or len(prefix) != NONCE_PREFIX_SIZE:
            raise CryptoError(reason="salt must be 32 bytes and nonce prefix 7 bytes")
        self.header = Header(VERSION, ALG_AES_256_GCM, chunk_log2, 0, key.key_id, salt, prefix)
        self._header_raw = self.header.pack()
        self._aead = _file_cipher(key.secret, self._header_raw)
        self._down = downstream
        self._chunk = self.header.chunk_size
        self._buf = bytearray()
        self._index = 0
        self._started = False
        self._closed = False
        self.size = 0  # plaintext bytes accepted

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Given plaintext, buffer it and emit every chunk now known not to be the final one."""
        if self._closed:
            raise CryptoError(reason="write after finish or abort")
        self._start()
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            if len(self._buf) == self._chunk:
                # More data is arriving, so the buffered full chunk cannot be the final one.
                self._seal(self._buf, last=False)
                self._buf.clear()
            if not self._buf and len(view) > self._chunk:
                # Fast path for large writes: seal straight from the caller's buffer.
                self._seal(view[: self._chunk], last=False)
                view = view[self._chunk :]
                continue
            take = self._chunk - len(self._buf)
            self._buf += view[:take]
            view = view[take:]

    def finish(self) -> None:
        """Seal the buffered bytes as the final chunk, then finish the downstream stage."""
        if self._closed:
            raise CryptoError(reason="finish after finish or abort")
        self._start()
        self._seal(self._buf, last=True)
        self._buf.clear()
        self._closed = True
        self._down.finish()

    def abort(self) -> None:
        """Drop buffered plaintext without sealing a final chunk and abort the downstream stage."""
        self._closed = True
        self._buf.clear()
        self._down.abort()

    @property
    def chunks_written(self) -> int:
        """Return how many chunks have been sealed and handed downstream."""
        return self._index

    def _start(self) -> None:
        """Emit the header once, before the first chunk."""
        if not self._started:
            self._started = True
            self._down.write(self._header_raw)

    def _seal(self, plaintext: bytes | bytearray | memoryview, last: bool) -> None:
        """Given one chunk of plaintext, encrypt it under the next nonce and pass it downstream."""
        if self._index >= MAX_CHUNKS:
            raise CryptoError(reason=f"input exceeds {MAX_CHUNKS} chunks of {self._chunk} bytes")
        nonce = _nonce(self.header.nonce_prefix, self._index, last)
        self._down.write(self._aead.encrypt(nonce, plaintext, self._header_raw))
        self._index += 1


class DecryptReader(io.RawIOBase):
    """A readable stream of the plaintext of a BKD1 stream; each chunk is released only once verified.

    Construction reads the header and picks the key (BadHeader, UnknownKey). Reads raise
    AuthenticationFailed, Truncated or TrailingData as soon as the damage is reached; what was
    returned before that is always an authentic prefix of the plaintext, but it is not the
    whole file until a read returns ``b""``.
    """

    def __init__(self, src: BinaryIO, keyring: Keyring) -> None:
        """Given a stream at the start of a BKD1 file and a keyring, read the header and find the key."""
        super().__init__()
        self._src = src
        self._header_raw = _read_up_to(src, HEADER_SIZE)
        self.header = Header.parse(self._header_raw)
        self.key = keyring.by_id(self.header.key_id)
        self._aead = _file_cipher(self.key.secret, self._header_raw)
        self._segment = self.header.chunk_size + TAG_SIZE
        self._pending = b""  # bytes read ahead to learn whether EOF follows a segment
        self._plain = memoryview(b"")
        self._index = 0
        self._done = False
        self.size = 0  # plaintext bytes verified so far

    def readable(self) -> bool:
        """Return True: this is a read-only stream."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Given a buffer, fill it with verified plaintext and return the count (0 at the verified end)."""
        out = memoryview(buffer).cast("B")
        while not self._plain and not self._done:
            self._open_next()
        n = min(len(out), len(self._plain))
        out[:n] = self._plain[:n]
        self._plain = self._plain[n:]
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Given a size (-1 for all), return up to that much verified plaintext; ``b""`` only at the end."""
        if size is None or size < 0:
            parts = []
            while True:
                piece = self.read(1 << 20)
                if not piece:
                    return b"".join(parts)
                parts.append(piece)
        while not self._plain and not self._done:
            self._open_next()
        piece = bytes(self._plain[:size])
        self._plain = self._plain[len(piece) :]
        return piece

    @property
    def complete(self) -> bool:
        """Return True once the final chunk verified and EOF followed it."""
        return self._done

    def _open_next(self) -> None:
        """Read and verify the next chunk into the plaintext buffer; raise a typed error on damage."""
        index = self._index
        # Read one byte past a full segment: whether anything follows decides which flag to try.
        data = self._pending + _read_up_to(self._src, self._segment + 1 - len(self._pending))
        segment, self._pending = data[: self._segment], data[self._segment :]
        at_eof = not self._pending
        if at_eof:
            plain = self._try(segment, index, last=True)
            if plain is None:
                self._fail_at_eof(segment, index)
            self._done = True
        else:
            plain = self._try(segment, index, last=False)
            if plain is None:
                if self._try(segment, index, last=True) is not None:
                    raise TrailingData(chunk=index)
                raise AuthenticationFailed(chunk=index)
        if index + 1 >= MAX_CHUNKS and not self._done:
            raise CryptoError(reason=f"chunk counter overflow after chunk {index}")
        self._index = index + 1
        self.size += len(plain)
        self._plain = memoryview(plain)

    def _fail_at_eof(self, segment: bytes, index: int) -> None:
        """Given the segment that ends the file and failed as final, raise the error that explains it."""
        if len(segment) == self._segment and self._try(segment, index, last=False) is not None:
            raise Truncated(
                reason=f"the file ends after chunk {index}, which is not the final chunk", chunk=index
            )
        if not segment:
            # Only possible for chunk 0: a non-final chunk is judged so only when bytes follow it.
            raise Truncated(reason="no chunk follows the header", chunk=index)
        # The final chunk holds at least one byte, unless it is chunk 0 of an empty input.
        smallest = TAG_SIZE if index == 0 else TAG_SIZE + 1
        if len(segment) < smallest:
            raise Truncated(reason=f"the file ends inside chunk {index}", chunk=index)
        if len(segment) < self._segment:
            raise AuthenticationFailed(
                f"authentication failed at chunk {index} (the chunk was altered or the file cut inside it)",
                chunk=index,
            )
        raise AuthenticationFailed(chunk=index)

    def _try(self, segment: bytes, index: int, last: bool) -> bytes | None:
        """Given a segment, return its plaintext if it opens as chunk ``index`` with that flag, else None."""
        if len(segment) < TAG_SIZE:
            return None
        try:
            return self._aead.decrypt(
                _nonce(self.header.nonce_prefix, index, last), segment, self._header_raw
            )
        except InvalidTag:
            return None


def decrypt_file(src: Path, out: Path, keyring: Keyring, *, overwrite: bool = True) -> DecryptResult:
    """Given a BKD1 file, write its verified plaintext to ``out`` and return size, SHA-256 and key id.

    The plaintext goes to a temporary file (mode 0600) beside ``out``, which is fsynced and
    renamed only after the final chunk verified and EOF followed it. On any error the
    temporary file is removed and the error re-raised; ``out`` is never created or changed.
    With ``overwrite=False`` an existing ``out`` raises FileExistsError, checked atomically.
    """
    out = Path(out)
    digest = hashlib.sha256()
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.part")
    with open(src, "rb") as f:
        reader = DecryptReader(f, keyring)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=True) as w:
                while piece := reader.read(1 << 20):
                    digest.update(piece)
                    w.write(piece)
                w.flush()
                os.fsync(w.fileno())
            if overwrite:
                os.replace(tmp, out)
            else:
                _rename_no_replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    dfd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return DecryptResult(size=reader.size, sha256=digest.hexdigest(), key_id=reader.header.key_id.hex())


def _rename_no_replace(tmp: Path, out: Path) -> None:
    """Given a finished temp file, move it to ``out``; raise FileExistsError if ``out`` exists."""
    try:
        # link() refuses an existing target, unlike rename(): no window in which to clobber it.
        os.link(tmp, out)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links (vfat, some FUSE mounts): check, then rename.
        if out.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out)) from None
        os.replace(tmp, out)
        return
    tmp.unlink()
