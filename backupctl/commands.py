"""backupctl's commands: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backupctl import render
from backupctl.client import Client
from backupctl.render import print_json, table
from backupd.errors import EXIT_ERROR, EXIT_JOB_FAILED, EXIT_JOB_PARTIAL, EXIT_OK, EXIT_USAGE

STATUS_EXIT = {
    "succeeded": EXIT_OK,
    "partial": EXIT_JOB_PARTIAL,
    "failed": EXIT_JOB_FAILED,
    "interrupted": EXIT_JOB_FAILED,
    "cancelled": EXIT_ERROR,
}


def _client(args: argparse.Namespace, timeout: float | None = 30.0) -> Client:
    return Client(args.socket_path, timeout)


def _call(args: argparse.Namespace, op: str, **kw: Any) -> Any:
    with _client(args) as c:
        return c.call(op, **kw)


def usage(args: argparse.Namespace) -> int:
    print(f"backupctl {args.command}: a subcommand is required (see --help)", file=sys.stderr)
    return EXIT_USAGE


def status(args: argparse.Namespace) -> int:
    st = _call(args, "status")
    if args.json:
        print_json(st)
        return 0
    print(f"backupd {st['version']} (pid {st['pid']}), up {render.duration(st['uptime'])}")
    print(f"config: {', '.join(st['config'])}; state: {st['state_dir']}")
    print(
        f"jobs: {st['jobs']}; running {len(st['running'])}/{st['max_concurrent_jobs']}, queued {len(st['queued'])}"
    )
    items = st["running"] + st["queued"]
    if items:
        print()
        print(
            table(
                ["execution", "job", "kind", "state", "step", "bytes", "elapsed"],
                [
                    (
                        i["execution_id"],
                        i["job"],
                        i["kind"],
                        i["state"],
                        i["progress"]["step"],
                        render.size(i["progress"]["bytes"]),
                        render.duration(i["progress"]["elapsed"]),
                    )
                    for i in items
                ],
            )
        )
    return 0


def jobs(args: argparse.Namespace) -> int:
    rows = _call(args, "jobs")
    if args.json:
        print_json(rows)
        return 0
    print(
        table(
            ["job", "source", "destinations", "schedule", "next run", "last", "last success"],
            [
                (
                    j["name"],
                    j["source"],
                    ",".join(j["destinations"]),
                    j["schedule"],
                    render.when(j["next_run"]),
                    j["last_status"],
                    render.when(j["last_success"]),
                )
                for j in rows
            ],
        )
    )
    return 0


def _finish(args: argparse.Namespace, client: Client, execution: int, follow: bool) -> int:
    view = render.ProgressView() if follow and not args.json else None
    on_event = view.event if view else None
    if follow:
        client.call("logs", execution=execution, follow=True, on_event=on_event)
    rec = client.call("wait", execution=execution)
    if view:
        view.close()
    if args.json:
        print_json(rec)
    else:
        detail = f": {rec['error']}" if rec.get("error") else ""
        print(f"execution {execution} ({rec['job']}): {rec['status']}{detail}")
    return STATUS_EXIT.get(rec["status"], EXIT_ERROR)


def run(args: argparse.Namespace) -> int:
    with _client(args, timeout=None if (args.wait or args.follow) else 30.0) as c:
        res = c.call("run", job=args.job)
        eid = res["execution_id"]
        if not (args.wait or args.follow):
            if args.json:
                print_json(res)
            else:
                print(f"execution {eid} queued for job {args.job}")
            return 0
        if not args.json and args.follow:
            print(f"execution {eid} queued for job {args.job}")
        return _finish(args, c, eid, args.follow)


def cancel(args: argparse.Namespace) -> int:
    res = _call(args, "cancel", execution=args.execution)
    print_json(res) if args.json else print(
        f"execution {args.execution}: cancel requested (was {res['was']})"
    )
    return 0


def history(args: argparse.Namespace) -> int:
    rows = _call(args, "history", job=args.job, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    print(
        table(
            ["id", "job", "kind", "trigger", "status", "step", "started", "duration", "size", "error"],
            [
                (
                    r["id"],
                    r["job"],
                    r["kind"],
                    r["trigger"],
                    r["status"],
                    r.get("step"),
                    render.when(r.get("started_at")),
                    render.duration(
                        (r["finished_at"] - r["started_at"])
                        if r.get("finished_at") and r.get("started_at")
                        else None
                    ),
                    render.size(r.get("size")),
                    (r.get("error") or "")[:60] or None,
                )
                for r in rows
            ],
        )
    )
    return 0


def _print_log(line: dict[str, Any]) -> None:
    print(
        f"{render.when(line['time'])} {line['level']:7} {line.get('step') or '-':10} {line['message']}",
        flush=True,
    )


def logs(args: argparse.Namespace) -> int:
    with _client(args, timeout=None if args.follow else 30.0) as c:

        def on_event(ev: dict[str, Any]) -> None:
            if ev.get("type") == "log":
                print_json(ev) if args.json else _print_log(ev)

        rest = c.call("logs", execution=args.execution, follow=args.follow, on_event=on_event)
    for line in rest:
        print_json(line) if args.json else _print_log(line)
    return 0


def watch(args: argparse.Namespace) -> int:
    view = render.ProgressView()
    with _client(args, timeout=None) as c:

        def on_event(ev: dict[str, Any]) -> None:
            if args.json:
                print_json(ev)
            elif ev.get("type") == "snapshot":
                for item in ev["running"] + ev["queued"]:
                    print(f"execution {item['execution_id']} ({item['job']}): {item['state']}", flush=True)
            elif ev.get("type") != "heartbeat":
                view.event(ev)

        res = c.call("watch", execution=args.execution, on_event=on_event)
    view.close()
    if args.execution is not None:
        status = res["execution"]["status"]
        print(f"execution {args.execution}: {status}")
        return STATUS_EXIT.get(status, EXIT_ERROR)
    return 0


def settings_get(args: argparse.Namespace) -> int:
    res = _call(args, "settings.get", key=args.key)
    if args.json:
        print_json(res)
    else:
        for k, v in res.items():
            print(f"{k} = {v}")
    return 0


def settings_set(args: argparse.Namespace) -> int:
    res = _call(args, "settings.set", key=args.key, value=args.value)
    print_json(res) if args.json else print(", ".join(f"{k} = {v}" for k, v in res.items()))
    return 0


def reload(args: argparse.Namespace) -> int:
    res = _call(args, "reload")
    print_json(res) if args.json else print(res["message"])
    return 0


def backups(args: argparse.Namespace) -> int:
    res = _call(args, "backups", job=args.job, destination=args.destination, all=args.all)
    if args.json:
        print_json(res)
        return 0
    print(
        table(
            ["created", "job", "database", "destination", "size", "locked", "verified", "result", "key"],
            [
                (
                    render.when(b["created_at"]),
                    b["job"],
                    b["database"],
                    b["destination"],
                    render.size(b["size"]),
                    "yes" if b["locked"] else "",
                    render.when(b.get("last_verified_at")),
                    b.get("verify_result"),
                    b["key"],
                )
                for b in res["backups"]
            ],
        )
    )
    for inc in res.get("incomplete", []):
        print(f"INCOMPLETE  {inc['destination']}  {render.size(inc['size'])}  {inc['key']}  (no sidecar)")
    return 0


def lock(args: argparse.Namespace) -> int:
    res = _call(args, "lock", key=args.key, destination=args.destination)
    print_json(res) if args.json else print(f"locked {args.key} on {', '.join(res['destinations'])}")
    return 0


def unlock(args: argparse.Namespace) -> int:
    res = _call(args, "unlock", key=args.key, destination=args.destination)
    print_json(res) if args.json else print(f"unlocked {args.key} on {', '.join(res['destinations'])}")
    return 0


def restore(args: argparse.Namespace) -> int:
    if not args.job and not args.key:
        print("backupctl restore: give a JOB or --key OBJECT_KEY", file=sys.stderr)
        return EXIT_USAGE
    with _client(args, timeout=None) as c:
        res = c.call(
            "restore",
            job=args.job,
            key=args.key,
            database=args.database,
            destination=args.destination,
            at=args.at,
            to=args.to,
            as_name=args.as_name,
            force=args.force,
        )
        eid = res["execution_id"]
        if not args.json:
            print(f"restore execution {eid}: {res.get('key')} from {res.get('destination')}")
        if args.no_wait:
            print_json(res) if args.json else None
            return 0
        return _finish(args, c, eid, follow=not args.json)


def verify(args: argparse.Namespace) -> int:
    with _client(args, timeout=None) as c:
        res = c.call("verify", job=args.job, key=args.key, full=args.full)
        rec = c.call("wait", execution=res["execution_id"])
        logs = c.call("logs", execution=res["execution_id"])
    if args.json:
        print_json({"execution": rec, "log": logs})
    else:
        for line in logs:
            _print_log(line)
        print(
            f"verify execution {rec['id']}: {rec['status']}"
            + (f": {rec['error']}" if rec.get("error") else "")
        )
    return STATUS_EXIT.get(rec["status"], EXIT_ERROR)


def _plan_table(res: dict[str, Any]) -> None:
    for group in res["groups"]:
        print(
            f"\n{group['job']} / {group['database']} on {group['destination']}: "
            f"keep {group['keep']}, delete {group['delete']}"
            + ("  (SAFETY LIMIT EXCEEDED)" if group.get("exceeds_safety_limit") else "")
        )
        print(
            table(
                ["created", "action", "reasons", "key"],
                [
                    (
                        render.when(d["created_at"]),
                        "keep" if d["keep"] else "DELETE",
                        "; ".join(d["reasons"]),
                        d["key"],
                    )
                    for d in group["decisions"]
                ],
            )
        )


def retention_plan(args: argparse.Namespace) -> int:
    res = _call(args, "retention.plan", job=args.job)
    print_json(res) if args.json else _plan_table(res)
    return 0


def retention_apply(args: argparse.Namespace) -> int:
    res = _call(args, "retention.apply", job=args.job, confirm=args.confirm)
    if args.json:
        print_json(res)
    else:
        _plan_table(res)
        print(f"\ndeleted {res.get('deleted', 0)}; skipped groups: {res.get('skipped', 0)}")
    return 0


def destinations_test(args: argparse.Namespace) -> int:
    rows = _call(args, "destinations.test", name=args.name)
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                ["destination", "type", "result", "detail"],
                [(r["name"], r["type"], "ok" if r["ok"] else "FAILED", r.get("error")) for r in rows],
            )
        )
    return 0 if all(r["ok"] for r in rows) else EXIT_ERROR


def notifications(args: argparse.Namespace) -> int:
    rows = _call(args, "notifications", limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    print(
        table(
            ["time", "channel", "event", "job", "execution", "result", "attempts", "error"],
            [
                (
                    render.when(r["time"]),
                    r["channel"],
                    r["event"],
                    r.get("job"),
                    r.get("execution_id"),
                    "ok" if r["ok"] else "FAILED",
                    r["attempts"],
                    r.get("error"),
                )
                for r in rows
            ],
        )
    )
    return 0


def notify_test(args: argparse.Namespace) -> int:
    res = _call(args, "notify.test", name=args.name)
    print_json(res) if args.json else print(
        f"{args.name}: {'ok' if res['ok'] else 'FAILED: ' + str(res.get('error'))}"
    )
    return 0 if res["ok"] else EXIT_ERROR


def metrics(args: argparse.Namespace) -> int:
    res = _call(args, "metrics")
    print_json(res) if args.json else sys.stdout.write(res["text"])
    return 0


def config_init(args: argparse.Namespace) -> int:
    """Write a minimal valid config (a commented starter) with tomli-w; refuse to overwrite."""
    import tomli_w

    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"backupctl config init: {path} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_ERROR
    starter = {
        "daemon": {"max_concurrent_jobs": 2, "timezone": "UTC"},
        "sources": {"app-db": {"type": "sqlite", "path": "/var/lib/app/app.db"}},
        "destinations": {"disk": {"type": "local", "path": "/var/lib/backupd/backups"}},
        "jobs": {
            "app-db": {
                "source": "app-db",
                "destinations": ["disk"],
                "schedule": "30 2 * * *",
                "compression": "zstd",
                "retention": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12},
            }
        },
    }
    header = "# backupd configuration; see the README's configuration reference.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(starter))
    print_json({"path": str(path)}) if args.json else print(f"wrote {path}")
    return 0
