"""Retention as a service: plan per group (job, database, destination) from the catalog,
and apply by deleting the sidecar first, then the data.

The plan itself is pure (:mod:`backupd.domain.retention`); this module feeds it the
committed backups of one group (the catalog is rebuilt from sidecars, so only committed
backups are in it; locks come from the state DB) and carries out the deletions. A plan that
would delete more than the policy's ``max_delete_fraction`` is not applied without
``--confirm``; the skip is logged with its MESSAGE_ID and notified.
"""

from __future__ import annotations

import logging
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backupd import catalog
from backupd.domain.naming import sidecar_key
from backupd.domain.records import BackupRecord
from backupd.domain.retention import BackupRef, RetentionPlan, plan_retention
from backupd.executions import build_destinations

if TYPE_CHECKING:
    from backupd.app import Application

log = logging.getLogger("backupd")


class RetentionService:
    def __init__(self, app: Application) -> None:
        self._app = app

    def _groups(self, job: str) -> dict[tuple[str, str], list[BackupRecord]]:
        groups: dict[tuple[str, str], list[BackupRecord]] = {}
        for rec in self._app.store.backups(job=job):
            groups.setdefault((rec.database, rec.destination), []).append(rec)
        return groups

    def _plan(self, job: str, records: list[BackupRecord]) -> RetentionPlan:
        cfg = self._app.loaded.config
        refs = [
            BackupRef(key=r.key, created_at=datetime.fromtimestamp(r.created_at, UTC), locked=r.locked)
            for r in records
        ]
        return plan_retention(refs, cfg.jobs[job].retention, zoneinfo.ZoneInfo(cfg.daemon.timezone))

    @staticmethod
    def _describe(job: str, database: str, destination: str, plan: RetentionPlan) -> dict[str, Any]:
        return {
            "job": job,
            "database": database,
            "destination": destination,
            "keep": len(plan.to_keep),
            "delete": len(plan.to_delete),
            "exceeds_safety_limit": plan.exceeds_safety_limit,
            "decisions": [
                {
                    "key": d.key,
                    "created_at": d.created_at.timestamp(),
                    "keep": d.keep,
                    "reasons": list(d.reasons),
                }
                for d in plan.decisions
            ],
        }

    def plan_job(self, job: str) -> dict[str, Any]:
        """Return every group's plan for ``job``; delete nothing."""
        groups = []
        for (database, destination), records in sorted(self._groups(job).items()):
            groups.append(self._describe(job, database, destination, self._plan(job, records)))
        return {"job": job, "groups": groups}

    def apply_job(
        self, job: str, confirm: bool = False, log_line: Callable[[str, str], None] | None = None
    ) -> dict[str, Any]:
        """Apply every group's plan; a group beyond the safety limit is skipped unless
        ``confirm``. Return the plans with counts of deleted and skipped."""
        result = {"job": job, "groups": [], "deleted": 0, "skipped": 0, "errors": []}
        for (database, destination), records in sorted(self._groups(job).items()):
            summary = self._apply_group(job, database, destination, records, confirm, log_line)
            result["groups"].append(summary)
            result["deleted"] += summary["deleted"]
            result["skipped"] += int(summary["skipped"])
            result["errors"].extend(summary["errors"])
        return result

    def apply_after_backup(self, job: str, database: str, destination: str) -> dict[str, Any]:
        """The pipeline's retention step for one group (never confirmed)."""
        records = self._groups(job).get((database, destination), [])
        return self._apply_group(job, database, destination, records, False, None)

    def _apply_group(
        self,
        job: str,
        database: str,
        destination: str,
        records: list[BackupRecord],
        confirm: bool,
        log_line: Callable[[str, str], None] | None,
    ) -> dict[str, Any]:
        plan = self._plan(job, records)
        summary = self._describe(job, database, destination, plan)
        summary.update(deleted=0, skipped=False, errors=[])
        if not plan.to_delete:
            return summary
        if plan.exceeds_safety_limit and not confirm:
            message = (
                f"retention for {job}/{database} on {destination} would delete {len(plan.to_delete)} of "
                f"{plan.good_count} backups (more than max_delete_fraction); not applied — review with "
                f"'backupctl retention plan {job}' and apply with --confirm"
            )
            log.warning(
                message,
                extra={"JOB": job, "DESTINATION": destination, "MESSAGE_ID": catalog.RETENTION_SKIPPED},
            )
            self._app.notify_event("retention.skipped", job, None, None, message)
            summary["skipped"] = True
            return summary
        storage = build_destinations(self._app.loaded, [destination], self._app.actx)[destination]
        try:
            for decision in plan.to_delete:
                try:
                    # the sidecar goes first: a crash in between leaves an incomplete object,
                    # never a sidecar pointing at nothing
                    storage.delete(sidecar_key(decision.key))
                    storage.delete(decision.key)
                except Exception as exc:
                    summary["errors"].append(f"{decision.key}: {exc}")
                    continue
                self._app.store.remove_backup(destination, decision.key)
                summary["deleted"] += 1
                text = f"deleted {decision.key} from {destination} (no rule keeps it)"
                log.info(text, extra={"JOB": job, "DESTINATION": destination})
                if log_line is not None:
                    log_line("info", text)
        finally:
            storage.close()
        return summary


def install(app: Application, ext: dict[str, Any]) -> None:
    service = RetentionService(app)
    ext["retention"] = service
    app.services.apply_retention = service.apply_after_backup
