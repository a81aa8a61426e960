"""Shared parts of the MongoDB tool STAND-INS (not MongoDB): a JSON "server", BSON, and the
mongodump archive format.

No MongoDB server or Database Tools package exists for Debian 12 and nothing can be
downloaded here, so ``mongodump``/``mongorestore`` in this directory play the tools' part
against a JSON file named by ``$MONGO_STANDIN_STATE``:

    {"server_version": "7.0.14", "users": {"backup": "<password>"},
     "databases": {"shop": {"orders": [{"_id": 1, ...}, ...]}}}

They behave like the real tools where backupd depends on it: options spelled as the tools
spell them, the password only from the ``--config`` YAML file (``password:``/``uri:``), the
archive layout (magic 0x8199e26d, header, collection metadata, terminator, namespace
segments, EOF blocks with a CRC-64/ECMA), ``Failed: ...`` and exit status 1 on errors,
``--nsInclude/--nsFrom/--nsTo``, ``--drop``, ``--stopOnError`` and the "N document(s) failed
to restore" summary. They also check what a real tool would not: that the password is on
no argv and that the config file has mode 0600, and they log each call to
``$MONGO_STANDIN_LOG``. ``$MONGO_STANDIN_FAULT`` injects faults (``empty``: exit 0, no
output; ``disconnect``: stop mid-archive with a connection error).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import struct
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

MAGIC = struct.pack("<I", 0x8199E26D)
TERMINATOR = b"\xff\xff\xff\xff"
TOOL_VERSION = "100.9.4-standin"
_POLY = 0xC96C5795D7870F42
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc64(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


# --- BSON (the subset the tests' documents use) ------------------------------------------
def encode(doc: dict[str, Any]) -> bytes:
    body = b"".join(_element(k, v) for k, v in doc.items())
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _element(key: str, value: Any) -> bytes:
    name = key.encode() + b"\x00"
    if isinstance(value, bool):
        return b"\x08" + name + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"\x10" + name + struct.pack("<i", value)
        return b"\x12" + name + struct.pack("<q", value)
    if isinstance(value, float):
        return b"\x01" + name + struct.pack("<d", value)
    if isinstance(value, str):
        data = value.encode() + b"\x00"
        return b"\x02" + name + struct.pack("<i", len(data)) + data
    if value is None:
        return b"\x0a" + name
    if isinstance(value, dict) and set(value) == {"$binary"}:
        data = base64.b64decode(value["$binary"])
        return b"\x05" + name + struct.pack("<i", len(data)) + b"\x00" + data
    if isinstance(value, dict):
        return b"\x03" + name + encode(value)
    if isinstance(value, list):
        return b"\x04" + name + encode({str(i): v for i, v in enumerate(value)})
    raise TypeError(f"stand-in BSON cannot encode {type(value).__name__}")


def decode(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pos = 4
    while data[pos] != 0:
        kind = data[pos]
        end = data.index(b"\x00", pos + 1)
        key = data[pos + 1 : end].decode()
        pos = end + 1
        if kind == 0x08:
            out[key], pos = data[pos] == 1, pos + 1
        elif kind == 0x10:
            out[key], pos = struct.unpack_from("<i", data, pos)[0], pos + 4
        elif kind == 0x12:
            out[key], pos = struct.unpack_from("<q", data, pos)[0], pos + 8
        elif kind == 0x01:
            out[key], pos = struct.unpack_from("<d", data, pos)[0], pos + 8
        elif kind == 0x02:
            n = struct.unpack_from("<i", data, pos)[0]
            out[key], pos = data[pos + 4 : pos + 3 + n].decode(), pos + 4 + n
        elif kind == 0x0A:
            out[key] = None
        elif kind == 0x05:
            n = struct.unpack_from("<i", data, pos)[0]
            out[key] = {"$binary": base64.b64encode(data[pos + 5 : pos + 5 + n]).decode()}
            pos += 5 + n
        elif kind in (0x03, 0x04):
            n = struct.unpack_from("<i", data, pos)[0]
            sub = decode(data[pos : pos + n])
            out[key] = list(sub.values()) if kind == 0x04 else sub
            pos += n
        else:
            raise ValueError(f"stand-in BSON cannot decode type 0x{kind:02x}")
    return out


# --- the "server" and the checks a careful tool would make --------------------------------
def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"2024-01-01T00:00:00.000+0000\tFailed: {message}\n")
    sys.exit(code)


def state_path() -> Path:
    return Path(os.environ["MONGO_STANDIN_STATE"])


def load_state() -> dict[str, Any]:
    return json.loads(state_path().read_text())


def save_state(state: dict[str, Any]) -> None:
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_path())


def parse_args(argv: list[str]) -> dict[str, Any]:
    """Options as the Database Tools take them (``--name=value`` or a bare flag)."""
    opts: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--"):
            fail(f"error parsing positional arguments: stand-in accepts options only, got {arg!r}")
        name, eq, value = arg[2:].partition("=")
        opts[name] = value if eq else True
    return opts


def read_config(path: str) -> dict[str, str]:
    """The ``--config`` YAML file: ``key: value`` lines, values plain or double-quoted."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o600:
        fail(f"stand-in check: config file {path} has mode {oct(mode)}, expected 0o600", 3)
    conf: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition(":")
        raw = raw.strip()
        conf[key.strip()] = json.loads(raw) if raw.startswith('"') else raw
    unknown = set(conf) - {"password", "uri", "sslPEMKeyPassword"}
    if unknown:
        fail(f"error parsing config file: unknown keys {sorted(unknown)}")
    return conf


def connect(tool: str, argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check argv and config like the tools (plus the stand-in's own secrecy checks);
    authenticate against the state; log the call. Return (options, state)."""
    state = load_state()
    opts = parse_args(argv)
    passwords = [p for p in state.get("users", {}).values() if p]
    if any(p in arg for p in passwords for arg in sys.argv):
        fail("stand-in check: a password appears on the command line", 3)
    if "password" in opts or "uri" in opts:
        fail("stand-in check: --password/--uri given on the command line", 3)
    conf = read_config(opts["config"]) if "config" in opts else {}
    uri = urlsplit(conf.get("uri", "mongodb://127.0.0.1:27017"))
    user = unquote(uri.username or "")
    log = os.environ.get("MONGO_STANDIN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(
                json.dumps({"tool": tool, "argv": argv, "config_keys": sorted(conf), "user": user}) + "\n"
            )
    if state.get("users"):
        if uri.password:
            fail("stand-in check: the password is inside the uri", 3)
        if state["users"].get(user) != conf.get("password"):
            fail(
                f"can't create session: failed to connect to mongodb://{uri.hostname}:{uri.port}/: "
                "connection() error occurred during connection handshake: auth error: sasl conversation "
                'error: unable to authenticate using mechanism "SCRAM-SHA-256": (AuthenticationFailed) '
                "Authentication failed."
            )
    return opts, state


def log_line(message: str) -> None:
    sys.stderr.write(f"2024-01-01T00:00:00.000+0000\t{message}\n")
