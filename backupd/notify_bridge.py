"""Connects the daemon's events to the notification dispatcher and records every attempt
in the state DB (``backupctl notifications``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from backupd.config.load import LoadedConfig
from backupd.errors import ChannelNotFound
from backupd.notify.dispatcher import Dispatcher, NotificationAttempt, build_channels
from backupd.notify.events import Event

if TYPE_CHECKING:
    from backupd.app import Application

log = logging.getLogger("backupd")


class NotifyBridge:
    def __init__(self, app: Application) -> None:
        self._app = app
        self.dispatcher = Dispatcher(build_channels(app.loaded.config.notifications), self._record)

    def _record(self, a: NotificationAttempt) -> None:
        self._app.store.record_notification(
            a.channel, a.event_kind, a.job, a.execution_id, a.ok, a.attempts, a.error, a.duration
        )

    def emit(
        self, kind: str, job: str | None, execution_id: int | None, status: str | None, message: str
    ) -> None:
        """Send an event to the channels of its job (``notify = [...]``), or, for an event of
        no job, to every channel whose filter accepts it. Never blocks."""
        try:
            event = Event(
                kind=kind, message=message or kind, job=job, execution_id=execution_id, status=status
            )
        except ValueError:
            return  # an outcome with no notification kind (cancelled, interrupted)
        jobs = self._app.loaded.config.jobs
        if job is not None and job in jobs:
            self.dispatcher.notify(event, jobs[job].notify)
        else:
            self.dispatcher.notify_all(event)

    def send_test(self, name: str | None) -> dict[str, Any]:
        if not name:
            raise ChannelNotFound(channel="")
        return self.dispatcher.send_test(name).to_json_dict()

    def reload(self, new: LoadedConfig) -> None:
        self.dispatcher.replace_channels(build_channels(new.config.notifications))


def install(app: Application, ext: dict[str, Any]) -> Any:
    bridge = NotifyBridge(app)
    ext["notify"] = bridge
    ext.setdefault("reload_hooks", []).append(bridge.reload)
    return lambda: bridge.dispatcher.close(5.0)
