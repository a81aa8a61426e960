"""backupctl commands that work on files alone, without the daemon: ``key generate``, ``decrypt``, ``inspect``.

They exist for the day the daemon, its state or its host is gone: with a copy of a backup
and of the key file an administrator can check and decrypt it. Each handler returns the exit
code (0 ok, 1 error, 2 usage) and prints errors as ``backupctl: COMMAND: message`` on stderr;
with ``--json`` the result (or ``{"error": {"code", "message"}}``) goes to stdout as JSON.

``backupd.crypto`` is imported inside the handlers: loading ``cryptography`` costs more than
the rest of backupctl's start-up, and most backupctl commands never need it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backupd.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, BackupdError

ENCRYPTED_SUFFIX = ".bkd"
SIDECAR_SUFFIX = ".meta.json"


def add_offline_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Given backupctl's subparsers, register ``key``, ``decrypt`` and ``inspect`` with their handlers."""
    key = subparsers.add_parser("key", help="manage BKD1 master key files")
    _add_json(key)
    key.set_defaults(func=_usage_handler(key))
    key_sub = key.add_subparsers(dest="key_command", metavar="ACTION")
    gen = key_sub.add_parser("generate", help="create a new random key file (mode 0600, never overwrites)")
    gen.add_argument("path", metavar="PATH", type=Path, help="where to create the key file")
    _add_json(gen)
    gen.set_defaults(func=cmd_key_generate)

    dec = subparsers.add_parser("decrypt", help="decrypt a BKD1 backup file with key files, offline")
    dec.add_argument("file", metavar="FILE", type=Path, help="the encrypted file (usually *.bkd)")
    dec.add_argument(
        "--key",
        dest="keys",
        metavar="PATH",
        action="append",
        required=True,
        type=Path,
        help="a key file to try (repeatable; the file's key id picks the right one)",
    )
    dec.add_argument("-o", "--output", metavar="OUT", type=Path, help="default: FILE without .bkd")
    dec.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _add_json(dec)
    dec.set_defaults(func=cmd_decrypt)

    ins = subparsers.add_parser("inspect", help="show a BKD1 file's header and its .meta.json sidecar")
    ins.add_argument("file", metavar="FILE", type=Path, help="the encrypted file")
    _add_json(ins)
    ins.set_defaults(func=cmd_inspect)


def _add_json(parser: argparse.ArgumentParser) -> None:
    """Given a parser, add ``--json`` without overriding a ``--json`` given to the main parser."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def _usage_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Given a parser with sub-actions, return a handler that prints its usage and returns 2."""

    def handler(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: an action is required", file=sys.stderr)
        return EXIT_USAGE

    return handler


def _wants_json(args: argparse.Namespace) -> bool:
    """Given parsed arguments, return whether ``--json`` was given anywhere on the command line."""
    return bool(getattr(args, "json", False))


def _fail(args: argparse.Namespace, command: str, err: BackupdError | OSError, code: int = EXIT_ERROR) -> int:
    """Given an error, report it on stderr (and as JSON on stdout with --json), return the exit code."""
    if isinstance(err, BackupdError):
        message, err_code = err.message, err.code
    else:
        where = f"{err.filename}: " if err.filename else ""
        message, err_code = f"{where}{err.strerror or err}", "os-error"
    print(f"backupctl: {command}: {message}", file=sys.stderr)
    if _wants_json(args):
        print(json.dumps({"error": {"code": err_code, "message": message}}))
    return code


def _usage(args: argparse.Namespace, command: str, message: str) -> int:
    """Given a usage problem, report it like an error and return exit code 2."""
    return _fail(args, command, BackupdError(message), EXIT_USAGE)


def cmd_key_generate(args: argparse.Namespace) -> int:
    """Given ``key generate PATH``, create the key file and print its key id; return the exit code."""
    from backupd.crypto.keyring import generate_key_file

    try:
        key_id = generate_key_file(args.path).hex()
    except BackupdError as err:
        return _fail(args, "key generate", err)
    if _wants_json(args):
        print(json.dumps({"path": str(args.path), "key_id": key_id}))
    else:
        print(key_id)
        print(f"wrote {args.path}; keep a copy somewhere other than the backups", file=sys.stderr)
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    """Given ``decrypt FILE --key PATH... [-o OUT] [--force]``, write the verified plaintext; return the exit code.

    Nothing is written to OUT unless the whole file verified.
    """
    src: Path = args.file
    out: Path | None = args.output
    if out is None:
        if src.suffix != ENCRYPTED_SUFFIX or src.name == ENCRYPTED_SUFFIX:
            return _usage(
                args, "decrypt", f"{src} does not end in {ENCRYPTED_SUFFIX}; name the output with -o"
            )
        out = src.with_suffix("")
    if out.exists() and not args.force:
        return _fail(args, "decrypt", BackupdError(f"{out} exists; use --force to replace it"))
    if out.exists() and out.resolve() == src.resolve():
        return _usage(args, "decrypt", "the output would replace the input")
    from backupd.crypto.bkd1 import decrypt_file
    from backupd.crypto.keyring import Keyring

    try:
        keyring = Keyring.from_files(args.keys)
        result = decrypt_file(src, out, keyring, overwrite=args.force)
    except (BackupdError, OSError) as err:
        return _fail(args, "decrypt", err)
    if _wants_json(args):
        print(
            json.dumps(
                {
                    "input": str(src),
                    "output": str(out),
                    "size": result.size,
                    "sha256": result.sha256,
                    "key_id": result.key_id,
                }
            )
        )
    else:
        print(f"{out}: {result.size} bytes, sha256 {result.sha256}, key id {result.key_id}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """Given ``inspect FILE``, print the BKD1 header and the sidecar beside FILE; return the exit code."""
    from backupd.crypto.bkd1 import ALG_NAMES, HEADER_SIZE, TAG_SIZE, read_header

    src: Path = args.file
    try:
        with open(src, "rb") as f:
            header = read_header(f)
            file_size = os.fstat(f.fileno()).st_size
    except (BackupdError, OSError) as err:
        return _fail(args, "inspect", err)
    info: dict[str, Any] = {
        "file": str(src),
        "file_size": file_size,
        "format": "BKD1",
        "version": header.version,
        "alg": header.alg,
        "alg_name": ALG_NAMES.get(header.alg, "unknown"),
        "chunk_log2": header.chunk_log2,
        "chunk_size": header.chunk_size,
        "flags": header.flags,
        "key_id": header.key_id.hex(),
        "salt": header.salt.hex(),
        "nonce_prefix": header.nonce_prefix.hex(),
    }
    info.update(_size_estimate(file_size - HEADER_SIZE, header.chunk_size, TAG_SIZE))
    sidecar_path = src.with_name(src.name + SIDECAR_SUFFIX)
    sidecar, problem = _read_sidecar(sidecar_path)
    info["sidecar"] = sidecar
    if problem:
        info["sidecar_problem"] = problem
    if sidecar is not None:
        info["sidecar_checks"] = _sidecar_checks(sidecar, file_size, info["key_id"])
    if _wants_json(args):
        print(json.dumps(info, indent=2))
    else:
        _print_inspect(info, sidecar_path)
    return EXIT_OK


def _size_estimate(body: int, chunk: int, tag: int) -> dict[str, Any]:
    """Given the bytes after the header, return the chunk count and plaintext size the length implies.

    This reads only the length, no chunk is verified; a length no valid file can have is flagged.
    """
    segment = chunk + tag
    full, rest = divmod(body, segment)
    if rest == 0 and full > 0:
        return {"chunks": full, "decrypted_size": full * chunk, "length_consistent": True}
    if rest >= tag and (rest > tag or full == 0):
        return {"chunks": full + 1, "decrypted_size": full * chunk + rest - tag, "length_consistent": True}
    return {"chunks": None, "decrypted_size": None, "length_consistent": False}


def _read_sidecar(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Given the sidecar's path, return (its JSON object or None, a problem description or None)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    except ValueError as exc:
        return None, f"{path}: not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{path}: not a JSON object"
    return data, None


def _sidecar_checks(sidecar: dict[str, Any], file_size: int, key_id: str) -> dict[str, bool | None]:
    """Given a sidecar, compare what it records with the file; None where it records nothing."""
    encryption = sidecar.get("encryption")
    recorded_id = encryption.get("key_id") if isinstance(encryption, dict) else None
    size = sidecar.get("size")
    return {
        "size_matches": None if not isinstance(size, int) else size == file_size,
        "key_id_matches": None if not isinstance(recorded_id, str) else recorded_id.lower() == key_id,
    }


def _print_inspect(info: dict[str, Any], sidecar_path: Path) -> None:
    """Given the inspect result, print it as aligned ``name: value`` lines."""
    rows = [
        ("file", info["file"]),
        ("file size", info["file_size"]),
        ("format", f"BKD1 version {info['version']}"),
        ("algorithm", f"{info['alg']} ({info['alg_name']})"),
        ("chunk size", f"{info['chunk_size']} (2^{info['chunk_log2']})"),
        ("flags", info["flags"]),
        ("key id", info["key_id"]),
        ("salt", info["salt"]),
        ("nonce prefix", info["nonce_prefix"]),
    ]
    if info["length_consistent"]:
        rows.append(("chunks", f"{info['chunks']} (from the length; not verified)"))
        rows.append(("decrypted size", f"{info['decrypted_size']} (from the length; not verified)"))
    else:
        rows.append(("length", "no complete BKD1 file has this length: truncated or padded"))
    sidecar = info["sidecar"]
    if sidecar is None:
        rows.append(("sidecar", info.get("sidecar_problem") or f"none ({sidecar_path.name} not found)"))
    else:
        rows.append(("sidecar", str(sidecar_path)))
        rows.extend((f"  {name}", _flat(value)) for name, value in sidecar.items())
        for name, ok in info["sidecar_checks"].items():
            rows.append(
                (
                    f"  check {name.removesuffix('_matches')}",
                    "unknown" if ok is None else "ok" if ok else "MISMATCH",
                )
            )
    width = max(len(name) for name, _ in rows) + 1
    for name, value in rows:
        print(f"{name + ':':<{width}} {value}")


def _flat(value: Any) -> str:
    """Given a sidecar value, return it on one line (nested objects as compact JSON)."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "))
    return "null" if value is None else str(value)
