"""``backupctl``: the command line. Parses arguments, talks to the daemon, prints tables or
``--json``, and exits with the codes of DESIGN §12.

Imports only :mod:`backupd.ipc.protocol` and :mod:`backupd.errors` from the daemon's package
(plus the offline tools, which load their libraries only when used), so it starts fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backupctl import commands
from backupctl.client import find_socket
from backupd import __version__
from backupd.errors import (
    EXIT_ERROR,
    EXIT_JOB_FAILED,
    EXIT_JOB_PARTIAL,
    EXIT_PERMISSION,
    EXIT_PROTOCOL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BackupdError,
)

CLIENT_EXIT_CODES = {
    EXIT_ERROR,
    EXIT_USAGE,
    EXIT_UNREACHABLE,
    EXIT_PERMISSION,
    EXIT_PROTOCOL,
    EXIT_JOB_FAILED,
    EXIT_JOB_PARTIAL,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p = argparse.ArgumentParser(prog="backupctl", description="Control the backupd daemon.", parents=[common])
    p.add_argument("--socket", help="control socket (default $BACKUPD_SOCKET or /run/backupd/control.sock)")
    p.add_argument("--demo", metavar="DIR", help="talk to the demo daemon started with backupd --demo DIR")
    p.add_argument("--version", action="version", version=f"backupctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Any, help_text: str, **kw: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, parents=[common], **kw)
        sp.set_defaults(func=func)
        return sp

    add("status", commands.status, "daemon state, running and queued executions")
    add("jobs", commands.jobs, "configured jobs with schedule, next and last run")
    sp = add("run", commands.run, "start a backup of JOB now")
    sp.add_argument("job")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--wait", action="store_true", help="wait for the end; exit 10 if failed, 11 if partial")
    g.add_argument("--follow", action="store_true", help="show progress and log lines until the end")
    sp = add("cancel", commands.cancel, "cancel a queued or running execution")
    sp.add_argument("execution", type=int)
    sp = add("history", commands.history, "past executions")
    sp.add_argument("job", nargs="?")
    sp.add_argument("--limit", type=int, default=20)
    sp = add("logs", commands.logs, "log lines of an execution")
    sp.add_argument("execution", type=int)
    sp.add_argument("--follow", action="store_true")
    sp = add("watch", commands.watch, "live progress of running executions")
    sp.add_argument("execution", type=int, nargs="?")
    settings = add("settings", commands.usage, "read or change runtime settings")
    ssub = settings.add_subparsers(dest="settings_command", metavar="get|set")
    sp = ssub.add_parser("get", parents=[common])
    sp.add_argument("key", nargs="?")
    sp.set_defaults(func=commands.settings_get)
    sp = ssub.add_parser("set", parents=[common])
    sp.add_argument("key")
    sp.add_argument("value")
    sp.set_defaults(func=commands.settings_set)
    add("reload", commands.reload, "re-read the configuration (like systemctl reload)")
    sp = add("backups", commands.backups, "committed backups (from sidecars)")
    sp.add_argument("job", nargs="?")
    sp.add_argument("--destination")
    sp.add_argument("--all", action="store_true", help="also show incomplete objects (no sidecar)")
    for name, func in (("lock", commands.lock), ("unlock", commands.unlock)):
        sp = add(name, func, f"{name} a backup against retention")
        sp.add_argument("key")
        sp.add_argument("--destination")
    sp = add("restore", commands.restore, "restore a backup into a source")
    sp.add_argument("job", nargs="?")
    sp.add_argument("--key", help="object key of the backup to restore")
    sp.add_argument("--database")
    sp.add_argument("--destination")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--at", help="newest backup at or before this time (ISO 8601)")
    g.add_argument("--latest", action="store_true", help="the newest backup (default)")
    sp.add_argument("--to", help="source to restore into (default: the job's source)")
    sp.add_argument("--as", dest="as_name", help="restore under this database name (a path for SQLite)")
    sp.add_argument("--force", action="store_true", help="replace an existing non-empty database")
    sp.add_argument("--no-wait", action="store_true", help="return once queued")
    sp = add("verify", commands.verify, "check stored backups against their sidecars")
    sp.add_argument("job", nargs="?")
    sp.add_argument("--key")
    sp.add_argument("--full", action="store_true", help="also decrypt, decompress and check the dump")
    retention = add("retention", commands.usage, "show or apply the retention plan")
    rsub = retention.add_subparsers(dest="retention_command", metavar="plan|apply")
    sp = rsub.add_parser("plan", parents=[common])
    sp.add_argument("job")
    sp.set_defaults(func=commands.retention_plan)
    sp = rsub.add_parser("apply", parents=[common])
    sp.add_argument("job")
    sp.add_argument("--confirm", action="store_true", help="apply even beyond max_delete_fraction")
    sp.set_defaults(func=commands.retention_apply)
    dest = add("destinations", commands.usage, "destination checks")
    dsub = dest.add_subparsers(dest="destinations_command", metavar="test")
    sp = dsub.add_parser("test", parents=[common])
    sp.add_argument("name", nargs="?")
    sp.set_defaults(func=commands.destinations_test)
    sp = add("notifications", commands.notifications, "recent notification attempts")
    sp.add_argument("--limit", type=int, default=20)
    notify = add("notify", commands.usage, "notification channels")
    nsub = notify.add_subparsers(dest="notify_command", metavar="test")
    sp = nsub.add_parser("test", parents=[common])
    sp.add_argument("name")
    sp.set_defaults(func=commands.notify_test)
    add("metrics", commands.metrics, "print the Prometheus metrics")
    config = add("config", commands.usage, "configuration helpers (offline)")
    csub = config.add_subparsers(dest="config_command", metavar="init")
    sp = csub.add_parser("init", parents=[common], help="write a minimal valid starter config")
    sp.add_argument("path")
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(func=commands.config_init, offline=True)
    try:
        from backupctl.offline import add_offline_commands
    except ImportError:  # pragma: no cover - shipped together
        pass
    else:
        add_offline_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.socket_path = find_socket(args.socket, args.demo)
    try:
        return int(args.func(args) or 0)
    except BackupdError as exc:
        print(f"backupctl: {exc.message} [{exc.code}]", file=sys.stderr)
        # daemon-side codes such as 78 (bad config) are plain errors for the client
        return exc.exit_code if exc.exit_code in CLIENT_EXIT_CODES else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
