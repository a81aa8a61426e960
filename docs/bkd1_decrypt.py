#!/usr/bin/env python3
"""Decrypt a backupd BKD1 file without backupd (see FORMAT.md). Needs only `cryptography`.

Usage: python3 bkd1_decrypt.py KEYFILE IN OUT
KEYFILE holds the 32-byte master key, raw or as 64 hex digits. Every chunk is verified
before it is written; OUT.tmp is renamed to OUT only after the final chunk verified.
Exit status: 0 ok, 1 the file is damaged or the key is wrong, 2 usage.
"""

import hashlib
import hmac
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def fail(msg):
    sys.exit(f"bkd1_decrypt: {msg}")


def read_key(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 64:
        return bytes.fromhex(text.decode("ascii"))
    fail("key file must hold 32 raw bytes or 64 hex digits")


def decrypt(master, src, dst):
    header = src.read(68)
    if len(header) != 68 or header[:10] != b"BKD1\x00\r\n\x1a\x01\x01":
        fail("not a BKD1 version 1 / AES-256-GCM file")
    _, log2, flags, key_id, salt, prefix, reserved = struct.unpack(">10sBB16s32s7sB", header)
    if not 12 <= log2 <= 24 or flags or reserved:
        fail("unsupported header")
    if key_id != hmac.new(master, b"backupd/v1/key-id", hashlib.sha256).digest()[:16]:
        fail(f"file was encrypted with key id {key_id.hex()}, not this key")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"backupd/v1/payload" + header[:12])
    aead = AESGCM(hkdf.derive(master))
    segment = (1 << log2) + 16
    data, index = src.read(segment + 1), 0
    while True:
        chunk, data = data[:segment], data[segment:]
        last = not data  # the final chunk is the one followed by EOF
        try:
            dst.write(aead.decrypt(prefix + struct.pack(">IB", index, last), chunk, header))
        except InvalidTag:
            fail(f"chunk {index} failed authentication (damaged, reordered, cut or wrong file)")
        if last:
            return
        index += 1
        data += src.read(segment + 1 - len(data))


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    master = read_key(sys.argv[1])
    out, tmp = sys.argv[3], sys.argv[3] + ".tmp"
    try:
        private = lambda path, flags: os.open(path, flags, 0o600)  # noqa: E731 - plaintext stays private
        with open(sys.argv[2], "rb") as src, open(tmp, "wb", opener=private) as dst:
            decrypt(master, src, dst)
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
