"""The backup catalog: rebuilt from sidecars, plus incomplete objects and destination checks.

At start (and after a reload) every destination is listed in the background: each
``.meta.json`` sidecar becomes a catalog row; a data object without a sidecar is incomplete:
shown by ``backupctl backups --all``, never counted as a backup, and deleted once older than
``[daemon].incomplete_grace`` (a backup being written right now is younger than that).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from backupd.domain.naming import data_key_of, is_sidecar, parse_key
from backupd.domain.sidecar import decode_sidecar
from backupd.executions import build_destinations, record_from_sidecar
from backupd.storage.base import ObjectInfo, StorageAdapter, get_bytes

if TYPE_CHECKING:
    from backupd.app import Application

log = logging.getLogger("backupd")


class CatalogService:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._incomplete: dict[str, list[ObjectInfo]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()

    def sync_all(self, startup: bool = False) -> None:
        """List every destination, rebuild its catalog rows, sweep old incomplete objects; at
        start-up also abort what writers of a previous daemon left unfinished (temp files,
        open multipart uploads) — only what is older than this daemon, so that a backup
        started meanwhile is never touched."""
        cfg = self._app.loaded
        for name in cfg.config.destinations:
            try:
                storage = build_destinations(cfg, [name], self._app.actx)[name]
            except Exception as exc:
                log.warning("catalog: destination %s: %s", name, exc, extra={"DESTINATION": name})
                continue
            try:
                if startup:
                    age = timedelta(
                        seconds=max(0.0, datetime.now(UTC).timestamp() - self._app.service.started_at)
                    )
                    swept = storage.abort_stale_uploads(older_than=age)
                    if swept:
                        log.info(
                            "%s: removed %d unfinished uploads of a previous daemon",
                            name,
                            swept,
                            extra={"DESTINATION": name},
                        )
                self.sync_destination(name, storage)
            except Exception as exc:
                log.warning("catalog: cannot list destination %s: %s", name, exc, extra={"DESTINATION": name})
            finally:
                storage.close()
        self.synced.set()

    def sync_destination(self, name: str, storage: StorageAdapter) -> None:
        listed_at = datetime.now(UTC).timestamp()
        objects = {o.key: o for o in storage.list("")}
        records = []
        for key in [k for k in objects if is_sidecar(k)]:
            data_key = data_key_of(key)
            if data_key not in objects:
                log.warning("catalog: %s on %s has a sidecar but no data; ignored", data_key, name)
                continue
            try:
                sc = decode_sidecar(get_bytes(storage, key))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning(
                    "catalog: unreadable sidecar %s on %s: %s", key, name, exc, extra={"DESTINATION": name}
                )
                continue
            records.append(record_from_sidecar(name, sc))
        self._app.store.replace_catalog(name, records, listed_at)
        committed = {r.key for r in records} | {k for k in objects if is_sidecar(k)}
        incomplete = [o for k, o in objects.items() if k not in committed and parse_key(k) is not None]
        with self._lock:
            self._incomplete[name] = incomplete
        self._sweep(name, storage, incomplete)
        log.info("catalog: %s holds %d backups, %d incomplete objects", name, len(records), len(incomplete))

    def _sweep(self, name: str, storage: StorageAdapter, incomplete: list[ObjectInfo]) -> None:
        grace = timedelta(seconds=self._app.loaded.config.daemon.incomplete_grace)
        now = datetime.now(UTC)
        for obj in incomplete:
            if obj.modified is not None and now - obj.modified > grace:
                storage.delete(obj.key)
                log.info("catalog: removed incomplete object %s from %s (no sidecar)", obj.key, name)

    def incomplete(self, job: str | None, destination: str | None) -> list[dict[str, Any]]:
        with self._lock:
            items = [(d, o) for d, objs in self._incomplete.items() for o in objs]
        out = []
        for dest, obj in items:
            parsed = parse_key(obj.key)
            if destination is not None and dest != destination:
                continue
            if job is not None and (parsed is None or parsed["job"] != job):
                continue
            out.append({"destination": dest, "key": obj.key, "size": obj.size})
        return out

    def test_destinations(self, name: str | None) -> list[dict[str, Any]]:
        cfg = self._app.loaded
        names = [name] if name else list(cfg.config.destinations)
        out = []
        for n in names:
            if n not in cfg.config.destinations:
                from backupd.errors import BackupNotFound

                raise BackupNotFound(what=f"destination named {n!r}")
            kind = str(type(cfg.config.destinations[n]).__struct_config__.tag)
            try:
                storage = build_destinations(cfg, [n], self._app.actx)[n]
                try:
                    storage.test()
                finally:
                    storage.close()
                out.append({"name": n, "type": kind, "ok": True, "error": None})
            except Exception as exc:
                out.append({"name": n, "type": kind, "ok": False, "error": str(exc)})
        return out


def install(app: Application, ext: dict[str, Any]) -> None:
    service = CatalogService(app)
    ext["catalog"] = service

    def start_sync(*_: Any, startup: bool = False) -> None:
        threading.Thread(target=service.sync_all, args=(startup,), name="catalog-sync", daemon=True).start()

    ext.setdefault("reload_hooks", []).append(start_sync)
    start_sync(startup=True)
