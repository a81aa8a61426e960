"""The op table: request → permission check → argument check → ControlService method.

Each op's arguments are a msgspec Struct, so a wrong type or an unknown argument is a
``bad-request`` naming the field. Mutating ops need root or a user in ``[daemon].admins``.
"""

from __future__ import annotations

import pwd
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from backupd.errors import PermissionDenied, ProtocolError, ProtocolMismatch, UnknownOperation
from backupd.ipc.protocol import MUTATING_OPS, PROTOCOL_VERSION, ok_reply
from backupd.ipc.server import Peer, Send

if TYPE_CHECKING:
    from backupd.service import ControlService


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NoArgs(_Args):
    pass


class HelloArgs(_Args):
    protocol: int
    client: str | None = None


class JobArg(_Args):
    job: str


class RunArgs(_Args):
    job: str


class ExecutionArg(_Args):
    execution: int


class WaitArgs(_Args):
    execution: int
    timeout: float | None = None


class HistoryArgs(_Args):
    job: str | None = None
    limit: int = 20


class LogsArgs(_Args):
    execution: int
    after: int = 0
    follow: bool = False


class WatchArgs(_Args):
    execution: int | None = None


class SettingsGetArgs(_Args):
    key: str | None = None


class SettingsSetArgs(_Args):
    key: str
    value: str | int | float | bool


class BackupsArgs(_Args):
    job: str | None = None
    destination: str | None = None
    all: bool = False


class KeyArgs(_Args):
    key: str
    destination: str | None = None


class RestoreArgs(_Args):
    job: str | None = None
    key: str | None = None
    database: str | None = None
    destination: str | None = None
    at: str | None = None
    to: str | None = None
    as_name: str | None = None
    force: bool = False


class VerifyArgs(_Args):
    job: str | None = None
    key: str | None = None
    full: bool = False


class RetentionArgs(_Args):
    job: str
    confirm: bool = False


class NameArg(_Args):
    name: str | None = None


class LimitArg(_Args):
    limit: int = 20


# op -> (argument struct, method name on ControlService, streams?)
OPS: dict[str, tuple[type[_Args], str, bool]] = {
    "hello": (HelloArgs, "hello", False),
    "status": (NoArgs, "status", False),
    "jobs": (NoArgs, "jobs", False),
    "run": (RunArgs, "run", False),
    "cancel": (ExecutionArg, "cancel", False),
    "history": (HistoryArgs, "history", False),
    "execution": (ExecutionArg, "execution", False),
    "wait": (WaitArgs, "wait", True),
    "logs": (LogsArgs, "logs", True),
    "watch": (WatchArgs, "watch", True),
    "settings.get": (SettingsGetArgs, "settings_get", False),
    "settings.set": (SettingsSetArgs, "settings_set", False),
    "reload": (NoArgs, "reload", False),
    "backups": (BackupsArgs, "backups", False),
    "lock": (KeyArgs, "lock", False),
    "unlock": (KeyArgs, "unlock", False),
    "restore": (RestoreArgs, "restore", False),
    "verify": (VerifyArgs, "verify", False),
    "retention.plan": (RetentionArgs, "retention_plan", False),
    "retention.apply": (RetentionArgs, "retention_apply", False),
    "destinations.test": (NameArg, "destinations_test", False),
    "notifications": (LimitArg, "notifications", False),
    "notify.test": (NameArg, "notify_test", False),
    "metrics": (NoArgs, "metrics", False),
}


def is_admin(peer: Peer, admins: list[str]) -> bool:
    """Return True for root, the daemon's own user, and the users named in ``admins``."""
    import os

    if peer.uid in (0, os.getuid()):
        return True
    try:
        name = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        return False
    return name in admins


def make_dispatch(service: ControlService) -> Callable[[Peer, dict[str, Any], Send], dict[str, Any]]:
    """Given the service, return the server's dispatch function."""

    def dispatch(peer: Peer, req: dict[str, Any], send: Send) -> dict[str, Any]:
        req_id = req.pop("id", None)
        op = req.pop("op", None)
        if not isinstance(op, str):
            raise ProtocolError(reason="missing 'op'")
        entry = OPS.get(op)
        if entry is None:
            raise UnknownOperation(op=op)
        if op in MUTATING_OPS and not is_admin(peer, service.admins()):
            raise PermissionDenied(op=op, uid=peer.uid)
        arg_type, method, streams = entry
        try:
            args = msgspec.convert(req, arg_type, strict=False)
        except msgspec.ValidationError as exc:
            raise ProtocolError(reason=f"{op}: {exc}") from None
        if op == "hello" and args.protocol != PROTOCOL_VERSION:  # type: ignore[attr-defined]
            raise ProtocolMismatch(server=PROTOCOL_VERSION, client=args.protocol)  # type: ignore[attr-defined]
        fn = getattr(service, method)
        kwargs = msgspec.structs.asdict(args)
        if streams:
            result = fn(**kwargs, emit=lambda ev: send({"id": req_id, "event": ev}))
        else:
            result = fn(**kwargs)
        return ok_reply(req_id, msgspec.to_builtins(result))

    return dispatch
