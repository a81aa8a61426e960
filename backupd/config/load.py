"""Read and validate backupd's configuration: the main TOML file plus ``conf.d/*.toml``.

Every error names the file, the key path and what was expected, e.g.::

    /etc/backupd/backupd.toml: jobs.nightly.retention.keep_dialy: unknown key
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from croniter import croniter

from backupd.config.model import NAME_PATTERN, Config
from backupd.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/backupd/backupd.toml")
DEFAULT_STATE_DIR = Path("/var/lib/backupd")
DEFAULT_SOCKET = Path("/run/backupd/control.sock")
MERGED_SECTIONS = ("sources", "destinations", "encryption", "notifications", "jobs")


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each named thing came from (for error messages)."""

    config: Config
    files: tuple[Path, ...]
    origin: dict[str, Path] = field(default_factory=dict)  # "jobs.x" -> file

    @property
    def state_dir(self) -> Path:
        return resolve_state_dir(self.config)

    @property
    def socket_path(self) -> Path:
        return resolve_socket(self.config)


def resolve_state_dir(config: Config) -> Path:
    if config.daemon.state_dir:
        return Path(config.daemon.state_dir)
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return DEFAULT_STATE_DIR


def resolve_socket(config: Config) -> Path:
    if config.daemon.socket:
        return Path(config.daemon.socket)
    env = os.environ.get("RUNTIME_DIRECTORY")
    if env:
        return Path(env.split(":")[0]) / "control.sock"
    return DEFAULT_SOCKET


_VALIDATION_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _key_path(raw: str) -> str:
    """Turn msgspec's ``$.jobs.x[0]`` path into ``jobs.x[0]``."""
    return raw[1:] if raw.startswith(".") else raw or "(top level)"


def _describe(err: msgspec.ValidationError) -> tuple[str, str]:
    m = _VALIDATION_PATH.match(str(err))
    assert m is not None
    msg = m.group("msg")
    path = _key_path(m.group("path") or "")
    if msg.startswith("Object contains unknown field"):
        unknown = msg.split("`")[1] if "`" in msg else "?"
        path = f"{path}.{unknown}" if path != "(top level)" else unknown
        msg = "unknown key"
    else:
        msg = msg[0].lower() + msg[1:] if msg else "invalid value"
    return path, msg


def parse_file(path: Path) -> Config:
    """Given one TOML file, return it validated as a Config; raise ConfigError naming the key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file=str(path), path="(file)", expected="file not found") from None
    except OSError as exc:
        raise ConfigError(file=str(path), path="(file)", expected=exc.strerror or str(exc)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file=str(path), path="(file)", expected="UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file=str(path), path="(syntax)", expected=f"valid TOML: {exc}") from None
    return parse_data(data, str(path))


def parse_data(data: dict[str, Any], name: str) -> Config:
    """Given parsed TOML, return a Config; raise ConfigError with the full key path.

    Named tables are checked one by one first, so that a path reads ``jobs.nightly.source``
    rather than msgspec's ``jobs[...].source``.
    """
    hints = typing.get_type_hints(Config, include_extras=True)
    for section in MERGED_SECTIONS:
        table = data.get(section)
        if not isinstance(table, dict):
            continue
        value_type = typing.get_args(hints[section])[1]
        for key, value in table.items():
            if not re.match(NAME_PATTERN, key):
                raise ConfigError(
                    file=name,
                    path=f"{section}.{key}",
                    expected="a name of lowercase letters, digits, '_', '.', '-' (at most 64)",
                )
            tags = _tags(value_type)
            if tags and isinstance(value, dict) and value.get("type") not in tags:
                raise ConfigError(
                    file=name,
                    path=f"{section}.{key}.type",
                    expected=f"one of {', '.join(tags)}, not {value.get('type')!r}",
                )
            try:
                msgspec.convert(value, value_type, strict=True)
            except msgspec.ValidationError as exc:
                path, msg = _describe(exc)
                sub = "" if path == "(top level)" else f".{path}"
                raise ConfigError(file=name, path=f"{section}.{key}{sub}", expected=msg) from None
    try:
        return msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        path, msg = _describe(exc)
        raise ConfigError(file=name, path=path, expected=msg) from None


def _tags(union: Any) -> list[str]:
    """Return the ``type`` tags of a tagged union of Structs (empty for other types)."""
    members = typing.get_args(union) or (union,)
    tags = [getattr(m, "__struct_config__", None) for m in members]
    return [str(t.tag) for t in tags if t is not None and t.tag is not None]


def _conf_d(main: Path) -> list[Path]:
    d = main.parent / "conf.d"
    return sorted(d.glob("*.toml")) if d.is_dir() else []


def load_config(path: Path = DEFAULT_CONFIG, extra: Iterable[Path] | None = None) -> LoadedConfig:
    """Given the main config path, read it and ``conf.d/*.toml`` beside it, merge, cross-check.

    Return a LoadedConfig; raise ConfigError (exit 78) naming the file and key on any error.
    A name defined in two files is an error.
    """
    files = [path, *(extra if extra is not None else _conf_d(path))]
    merged = Config()
    origin: dict[str, Path] = {}
    for i, f in enumerate(files):
        part = parse_file(f)
        if i == 0:
            merged.daemon = part.daemon
        elif "daemon" in tomllib.loads(f.read_text(encoding="utf-8")):
            raise ConfigError(file=str(f), path="daemon", expected="[daemon] only in the main file")
        for section in MERGED_SECTIONS:
            target: dict[str, Any] = getattr(merged, section)
            for name, value in getattr(part, section).items():
                key = f"{section}.{name}"
                if key in origin:
                    raise ConfigError(
                        file=str(f), path=key, expected=f"a unique name (already in {origin[key]})"
                    )
                origin[key] = f
                target[name] = value
    loaded = LoadedConfig(merged, tuple(files), origin)
    check_references(loaded)
    return loaded


def check_references(loaded: LoadedConfig) -> None:
    """Raise ConfigError for a job naming a missing source, destination, key or channel,
    a bad cron expression or an unknown timezone."""
    cfg = loaded.config
    main = str(loaded.files[0]) if loaded.files else "(config)"
    try:
        zoneinfo.ZoneInfo(cfg.daemon.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            file=main, path="daemon.timezone", expected=f"an IANA time zone, not {cfg.daemon.timezone!r}"
        ) from None
    if not croniter.is_valid(cfg.daemon.integrity_schedule):
        raise ConfigError(file=main, path="daemon.integrity_schedule", expected="a cron expression")
    for name, job in cfg.jobs.items():
        where = str(loaded.origin.get(f"jobs.{name}", main))

        def bad(key: str, expected: str, _name: str = name, _where: str = where) -> ConfigError:
            return ConfigError(file=_where, path=f"jobs.{_name}.{key}", expected=expected)

        if job.source not in cfg.sources:
            raise bad("source", f"one of the [sources] ({_names(cfg.sources)}), not {job.source!r}")
        for i, dest in enumerate(job.destinations):
            if dest not in cfg.destinations:
                raise bad(
                    f"destinations[{i}]",
                    f"one of the [destinations] ({_names(cfg.destinations)}), not {dest!r}",
                )
        if len(set(job.destinations)) != len(job.destinations):
            raise bad("destinations", "each destination once")
        if job.encryption is not None:
            key = cfg.encryption.get(job.encryption)
            if key is None:
                raise bad("encryption", f"one of the [encryption] keys ({_names(cfg.encryption)})")
            if key.decrypt_only:
                raise bad("encryption", f"a key usable for new backups ({job.encryption} is decrypt_only)")
        for i, ch in enumerate(job.notify):
            if ch not in cfg.notifications:
                raise bad(f"notify[{i}]", f"one of the [notifications] ({_names(cfg.notifications)})")
        if job.schedule is not None and not croniter.is_valid(job.schedule):
            raise bad("schedule", f"a cron expression like '30 2 * * *', not {job.schedule!r}")
        if job.retention.keep_within is not None:
            from backupd.domain.durations import parse_duration

            try:
                parse_duration(job.retention.keep_within)
            except ValueError as exc:
                raise bad("retention.keep_within", str(exc)) from None
    from backupd.notify.events import validate_event_filter

    for name, channel in cfg.notifications.items():
        try:
            validate_event_filter(channel.events)
        except ValueError as exc:
            raise ConfigError(
                file=str(loaded.origin.get(f"notifications.{name}", main)),
                path=f"notifications.{name}.events",
                expected=str(exc),
            ) from None
    if cfg.daemon.metrics_listen is not None:
        from backupd.metrics import parse_listen

        try:
            parse_listen(cfg.daemon.metrics_listen)
        except ValueError as exc:
            raise ConfigError(file=main, path="daemon.metrics_listen", expected=str(exc)) from None
    for name, key in cfg.encryption.items():
        if (key.key_file is None) == (key.credential is None):
            raise ConfigError(
                file=str(loaded.origin.get(f"encryption.{name}", main)),
                path=f"encryption.{name}",
                expected="exactly one of key_file or credential",
            )


def _names(d: dict[str, Any]) -> str:
    return ", ".join(sorted(d)) or "none defined"
