"""Resolve secrets named in the config: a ``*_file`` path or a systemd credential.

Secrets are read when needed, never stored in the config objects, and never logged; errors
name the file or credential but never echo its content.
"""

from __future__ import annotations

import os
from pathlib import Path

from backupd.errors import SecretError


def credentials_dir() -> Path | None:
    """Return ``$CREDENTIALS_DIRECTORY`` (set by systemd's LoadCredential=) or None."""
    env = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(env) if env else None


def read_secret_bytes(file: str | None, credential: str | None, what: str) -> bytes | None:
    """Given a file path or credential name (at most one), return the secret's bytes.

    Return None when neither is given; raise SecretError naming ``what`` and the place when
    it cannot be read.
    """
    if file and credential:
        raise SecretError(name=what, reason="give either a file or a credential, not both")
    if credential:
        cdir = credentials_dir()
        if cdir is None:
            raise SecretError(
                name=what, reason=f"credential {credential!r} named but $CREDENTIALS_DIRECTORY is not set"
            )
        path = cdir / credential
    elif file:
        path = Path(file)
    else:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SecretError(name=what, reason=f"{path} does not exist") from None
    except PermissionError:
        raise SecretError(name=what, reason=f"{path} is not readable by uid {os.getuid()}") from None
    except OSError as exc:
        raise SecretError(name=what, reason=f"{path}: {exc.strerror}") from None


def read_secret(file: str | None, credential: str | None, what: str) -> str | None:
    """Like :func:`read_secret_bytes`, decoded as UTF-8 with one trailing newline removed."""
    data = read_secret_bytes(file, credential, what)
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(name=what, reason="not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text
