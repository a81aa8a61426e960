"""Every failure backupd can report: one class each, with a stable code and a message template.

The code string travels in control-socket replies (``{"error": {"code": ...}}``) and is what
scripts match on; the message is for people. ``exit_code`` is what ``backupctl`` exits with
when the error reaches it. This module imports nothing from the rest of backupd so that
``backupctl`` can load it cheaply.
"""

from __future__ import annotations

from typing import Any, ClassVar

# backupctl exit codes (DESIGN §12)
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PERMISSION = 4
EXIT_PROTOCOL = 5
EXIT_JOB_FAILED = 10
EXIT_JOB_PARTIAL = 11
# backupd exit codes
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h


class BackupdError(Exception):
    """Base of all backupd errors. Subclasses set ``code`` and ``template``.

    Given keyword arguments, format ``template`` with them into the message. Extra
    keyword arguments are kept in ``details`` (they must never hold secrets).
    """

    code: ClassVar[str] = "error"
    template: ClassVar[str] = "{message}"
    exit_code: ClassVar[int] = EXIT_ERROR

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.details = details
        if message is None:
            try:
                message = self.template.format(**details)
            except (KeyError, IndexError):
                message = self.template
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


# --- configuration ---------------------------------------------------------------------
class ConfigError(BackupdError):
    code = "config-invalid"
    template = "{file}: {path}: {expected}"
    exit_code = EXIT_CONFIG


class SecretError(BackupdError):
    code = "secret-unavailable"
    template = "secret {name}: {reason}"


# --- control protocol ------------------------------------------------------------------
class ProtocolError(BackupdError):
    code = "bad-request"
    template = "bad request: {reason}"


class FrameTooLarge(ProtocolError):
    code = "frame-too-large"
    template = "request larger than {limit} bytes"


class UnknownOperation(ProtocolError):
    code = "unknown-op"
    template = "unknown operation {op!r}"


class ProtocolMismatch(BackupdError):
    code = "protocol-mismatch"
    template = "daemon speaks protocol {server}, client speaks {client}"
    exit_code = EXIT_PROTOCOL


class PermissionDenied(BackupdError):
    code = "permission-denied"
    template = "operation {op!r} needs root or a user listed in [daemon].admins (you are uid {uid})"
    exit_code = EXIT_PERMISSION


class DaemonUnreachable(BackupdError):
    code = "daemon-unreachable"
    template = "cannot reach backupd at {socket}: {reason}"
    exit_code = EXIT_UNREACHABLE


class SocketNotPermitted(DaemonUnreachable):
    code = "socket-not-permitted"
    template = "not permitted to connect to {socket}: {reason}"
    exit_code = EXIT_PERMISSION


class ShuttingDown(BackupdError):
    code = "shutting-down"
    template = "backupd is stopping and accepts no new work"


# --- lookups ---------------------------------------------------------------------------
class JobNotFound(BackupdError):
    code = "job-not-found"
    template = "no job named {job!r}"


class ExecutionNotFound(BackupdError):
    code = "execution-not-found"
    template = "no execution with id {execution}"


class BackupNotFound(BackupdError):
    code = "backup-not-found"
    template = "no backup {what}"


class SettingUnknown(BackupdError):
    code = "setting-unknown"
    template = "unknown setting {key!r} (known: {known})"


class SettingInvalid(BackupdError):
    code = "setting-invalid"
    template = "setting {key}: {reason}"


class AlreadyRunning(BackupdError):
    code = "already-running"
    template = "job {job!r} is already running as execution {execution}"


class NotCancellable(BackupdError):
    code = "not-cancellable"
    template = "execution {execution} is {status}, not queued or running"


# --- pipeline --------------------------------------------------------------------------
class StepFailed(BackupdError):
    """A pipeline step failed; ``step`` names it."""

    code = "step-failed"
    template = "{step}: {reason}"


class SourceError(BackupdError):
    code = "source-error"
    template = "source {source}: {reason}"


class DumpFailed(SourceError):
    code = "dump-failed"
    template = "dump of {database!r} failed: {reason}"


class RestoreFailed(SourceError):
    code = "restore-failed"
    template = "restore failed: {reason}"


class RestoreRefused(SourceError):
    code = "restore-refused"
    template = "restore refused: {reason}"


class ClientTooOld(SourceError):
    code = "client-too-old"
    template = "{tool} {client} is older than the server {server}; install {hint}"


class StorageError(BackupdError):
    code = "storage-error"
    template = "destination {destination}: {reason}"


class AllDestinationsFailed(StorageError):
    code = "all-destinations-failed"
    template = "every destination failed: {failures}"


class VerifyFailed(StorageError):
    code = "verify-failed"
    template = "{key}: stored bytes do not match ({reason})"


class KeyEscapesRoot(StorageError):
    code = "bad-key"
    template = "object key {key!r} would leave the destination's root"


class Cancelled(BackupdError):
    code = "cancelled"
    template = "cancelled"


# --- encryption (BKD1) -----------------------------------------------------------------
class CryptoError(BackupdError):
    code = "crypto-error"
    template = "{reason}"


class BadHeader(CryptoError):
    code = "bad-header"
    template = "not a BKD1 file or unsupported header: {reason}"


class UnknownKey(CryptoError):
    code = "unknown-key"
    template = "no key in the keyring has id {key_id}"


class AuthenticationFailed(CryptoError):
    code = "authentication-failed"
    template = "authentication failed at chunk {chunk}"


class Truncated(CryptoError):
    code = "truncated"
    template = "truncated: {reason}"


class TrailingData(CryptoError):
    code = "trailing-data"
    template = "bytes follow the final chunk"


class KeyFileError(CryptoError):
    code = "key-file-invalid"
    template = "key {path}: {reason}"


# --- notifications ---------------------------------------------------------------------
class NotifyError(BackupdError):
    """A notification could not be delivered. ``transient`` (a detail) says whether one retry
    may help (connection refused, 5xx, 429) or not (4xx, bad URL, refused signature)."""

    code = "notify-failed"
    template = "notification channel {channel}: {reason}"

    @property
    def transient(self) -> bool:
        """Return True when a retry might succeed."""
        return bool(self.details.get("transient", False))


class ChannelNotFound(BackupdError):
    code = "channel-not-found"
    template = "no notification channel named {channel!r}"


ALL_ERRORS: dict[str, type[BackupdError]] = {}


def _collect(cls: type[BackupdError]) -> None:
    for sub in cls.__subclasses__():
        ALL_ERRORS.setdefault(sub.code, sub)
        _collect(sub)


_collect(BackupdError)
ALL_ERRORS["error"] = BackupdError


def from_code(code: str, message: str) -> BackupdError:
    """Given a code and message from a reply, return the matching error instance."""
    cls = ALL_ERRORS.get(code, BackupdError)
    err = cls(message)
    return err
