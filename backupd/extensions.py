"""Installs the services built on the same ports as the pipeline (catalog, retention,
restore, integrity, notifications, metrics) onto the running Application."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backupd.app import Application


def install(app: Application) -> None:
    """Given a started Application's core (store, queue, service), register each extension
    under ``app.service.extensions``."""
    ext = app.service.extensions
    closers = []
    for module in (
        "catalog_sync",
        "retention_service",
        "restore",
        "integrity",
        "notify_bridge",
        "metrics_bridge",
    ):
        try:
            mod = __import__(f"backupd.{module}", fromlist=["install"])
        except ModuleNotFoundError as exc:
            if exc.name != f"backupd.{module}":
                raise
            continue
        closer = mod.install(app, ext)
        if closer is not None:
            closers.append(closer)

    def close_all() -> None:
        for c in reversed(closers):
            c()

    app.close_extensions = close_all  # type: ignore[attr-defined]
