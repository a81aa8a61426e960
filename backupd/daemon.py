"""The daemon's lifecycle: start-up, the main loop, reload, watchdog, drain and exit.

Signal handlers only set flags; the main loop, which wakes several times a second, acts on
them. systemd learns the state through sd_notify: READY=1 once the state DB is migrated and
the socket listens; a one-line STATUS=; WATCHDOG=1 at half of $WATCHDOG_USEC while the loop
and the workers are alive; RELOADING=1/READY=1 around a reload; STOPPING=1 at shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import sdnotify

from backupd import __version__, catalog
from backupd.config.load import LoadedConfig, load_config
from backupd.errors import EXIT_CONFIG, BackupdError, ConfigError, SecretError
from backupd.logs import setup_logging

log = logging.getLogger("backupd")
LOOP_INTERVAL = 0.2


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Daemon:
    def __init__(
        self, config_path: Path, loaded: LoadedConfig, config_loader: Callable[[], LoadedConfig] | None = None
    ) -> None:
        self.config_path = config_path
        self.loaded = loaded
        self._load = config_loader or (lambda: load_config(config_path))
        self._notifier = sdnotify.SystemdNotifier()
        self._stop_flag = False
        self._reload_flag = False
        self._reload_lock = threading.Lock()
        self._last_status = ""
        self.app: object | None = None

    # --- signals: flags only -----------------------------------------------------------------
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop_flag = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_flag = True

    def notify(self, message: str) -> None:
        self._notifier.notify(message)

    # --- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, drain; return the exit code."""
        from backupd.app import Application

        cfg = self.loaded.config.daemon
        setup_logging(cfg.log_target, cfg.log_level)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        app = Application(self.loaded, reloader=self.reload)
        self.app = app
        try:
            app.start()
        except (OSError, BackupdError) as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG if isinstance(exc, ConfigError | SecretError) else 1
        self.notify("READY=1")
        self._set_status(app.status_line())
        log.info(
            "backupd %s ready on %s",
            __version__,
            app.socket_path,
            extra={"MESSAGE_ID": catalog.DAEMON_STARTED},
        )
        watchdog = self._watchdog_interval()
        next_ping = time.monotonic()
        while not self._stop_flag:
            time.sleep(LOOP_INTERVAL)
            if self._reload_flag:
                self._reload_flag = False
                try:
                    self.reload()
                except ConfigError:
                    pass  # reported by reload(); the old config stays
            if watchdog and time.monotonic() >= next_ping:
                if app.healthy():
                    self.notify("WATCHDOG=1")
                else:
                    log.error("a worker thread died; withholding the watchdog ping")
                next_ping = time.monotonic() + watchdog
            self._set_status(app.status_line())
        self.notify("STOPPING=1")
        self._set_status("stopping: waiting for running jobs")
        log.info("stopping")
        app.stop(grace=cfg.shutdown_timeout)
        log.info("stopped")
        return 0

    def _watchdog_interval(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def _set_status(self, line: str) -> None:
        if line != self._last_status:
            self._last_status = line
            self.notify(f"STATUS={line}")

    def reload(self) -> str:
        """Re-read the config; swap it in, or keep the old one and raise ConfigError saying why."""
        from backupd.app import Application

        with self._reload_lock:
            self.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
            try:
                new = self._load()
            except ConfigError as exc:
                log.error(
                    "reload failed, keeping the previous configuration: %s",
                    exc,
                    extra={"MESSAGE_ID": catalog.RELOAD_FAILED},
                )
                app = self.app
                if isinstance(app, Application):
                    app.notify_event("reload.failed", None, None, None, str(exc))
                raise
            finally:
                self.notify("READY=1")
            self.loaded = new
            app = self.app
            if isinstance(app, Application):
                app.apply_config(new)
            log.info("configuration reloaded (%d jobs)", len(new.config.jobs))
            return f"configuration reloaded ({len(new.config.jobs)} jobs)"
