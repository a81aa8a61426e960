"""Stream stages: dump bytes flow through compress → encrypt → hash → writers in one pass.

Every stage is a :class:`ByteSink`: ``write`` pushes bytes downstream, ``finish`` flushes
what the stage holds and finishes the next stage, ``abort`` discards everything downstream.
Buffers are bounded by the stages' own block sizes, so memory does not grow with the dump;
a slow writer blocks ``write`` and so slows the dump (back-pressure through the pipe).

Readers for restore (decompression) live here too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Callable
from typing import BinaryIO, Protocol

import brotli
import zstandard

EXTENSIONS = {"none": "", "gzip": ".gz", "brotli": ".br", "zstd": ".zst"}
DEFAULT_LEVELS = {"gzip": 6, "brotli": 4, "zstd": 3}


class ByteSink(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class HashingSink:
    """Count and SHA-256 the bytes passing through, then hand them on unchanged."""

    def __init__(self, downstream: ByteSink) -> None:
        self._down = downstream
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._down.write(data)

    def finish(self) -> None:
        self._down.finish()

    def abort(self) -> None:
        self._down.abort()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _ZstdSink:
    def __init__(self, downstream: ByteSink, level: int, threads: int) -> None:
        self._down = downstream
        params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, write_checksum=1)
        self._c = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def write(self, data: bytes) -> None:
        out = self._c.compress(data)
        if out:
            self._down.write(out)

    def finish(self) -> None:
        out = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        if out:
            self._down.write(out)
        self._down.finish()

    def abort(self) -> None:
        self._down.abort()


class _ObjSink:
    """Adapter for compressors with ``compress(data)``/``flush()`` (zlib-style)."""

    def __init__(
        self, downstream: ByteSink, compress: Callable[[bytes], bytes], flush: Callable[[], bytes]
    ) -> None:
        self._down, self._compress, self._flush = downstream, compress, flush

    def write(self, data: bytes) -> None:
        out = self._compress(data)
        if out:
            self._down.write(out)

    def finish(self) -> None:
        out = self._flush()
        if out:
            self._down.write(out)
        self._down.finish()

    def abort(self) -> None:
        self._down.abort()


def compressor(name: str, downstream: ByteSink, level: int | None = None, threads: int = 0) -> ByteSink:
    """Given an algorithm name, return a sink compressing into ``downstream``.

    ``threads`` is zstd's worker count (0 = compress on the calling thread); raise
    ValueError for an unknown name.
    """
    lvl = DEFAULT_LEVELS.get(name, 0) if level is None else level
    if name == "none":
        return downstream
    if name == "zstd":
        return _ZstdSink(downstream, lvl, threads)
    if name == "gzip":
        c = zlib.compressobj(lvl, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return _ObjSink(downstream, c.compress, c.flush)
    if name == "brotli":
        b = brotli.Compressor(quality=lvl)
        return _ObjSink(downstream, b.process, b.finish)
    raise ValueError(f"unknown compression {name!r}")


class _BrotliReader(io.RawIOBase):
    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._d = brotli.Decompressor()
        self._buf = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf and not self._eof:
            chunk = self._src.read(256 * 1024)
            if not chunk:
                if not self._d.is_finished():
                    raise ValueError("brotli stream truncated")
                self._eof = True
                break
            self._buf = self._d.process(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def decompressor(name: str, src: BinaryIO) -> BinaryIO:
    """Given an algorithm name and a readable stream, return a stream of the plaintext."""
    if name == "none":
        return src
    if name == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)  # type: ignore[return-value]
    if name == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]
    if name == "brotli":
        return io.BufferedReader(_BrotliReader(src), 256 * 1024)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {name!r}")
