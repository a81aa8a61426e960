"""The shape of backupd's TOML configuration (DESIGN §4), as msgspec Structs.

Unknown keys are rejected everywhere (``forbid_unknown_fields``). Sources, destinations and
notification channels are tagged unions on their ``type`` key, so the adapter registry can
pick an implementation from the tag alone. Secrets are never inline: each is a ``*_file``
path or a systemd ``credential`` name, resolved at use time by :mod:`backupd.config.secrets`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DaemonConfig(_Strict, kw_only=True):
    max_concurrent_jobs: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    timezone: str = "UTC"
    state_dir: str | None = None
    socket: str | None = None
    admins: list[str] = []
    log_target: Literal["auto", "journal", "stderr"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    integrity_schedule: str = "0 4 * * 0"
    integrity_level: Literal["quick", "full"] = "quick"
    integrity_budget: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    incomplete_grace: Annotated[float, msgspec.Meta(ge=0)] = 86400.0
    metrics_listen: str | None = None
    metrics_textfile: str | None = None


# --- sources ---------------------------------------------------------------------------
class _Source(_Strict, tag_field="type", kw_only=True):
    pass


class SqliteSource(_Source, tag="sqlite", kw_only=True):
    path: str
    method: Literal["stream", "snapshot"] = "stream"


class PostgresSource(_Source, tag="postgresql", kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 5432
    user: str = "postgres"
    password_file: str | None = None
    credential: str | None = None
    databases: list[str] = []
    include_globals: bool = False
    sslmode: str | None = None
    bin_dir: str | None = None


class MysqlSource(_Source, tag="mysql", kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 3306
    socket: str | None = None
    user: str = "root"
    password_file: str | None = None
    credential: str | None = None
    databases: list[str] = []
    extra_dump_options: list[str] = []


class MariadbSource(MysqlSource, tag="mariadb", kw_only=True):
    pass


class RedisSource(_Source, tag="redis", kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 6379
    password_file: str | None = None
    credential: str | None = None
    username: str | None = None
    data_dir: str | None = None
    service: str | None = None
    start_command: list[str] | None = None


class MongoSource(_Source, tag="mongodb", kw_only=True):
    uri: str = "mongodb://127.0.0.1:27017"
    password_file: str | None = None
    credential: str | None = None
    databases: list[str] = []


SourceConfig = SqliteSource | PostgresSource | MysqlSource | MariadbSource | RedisSource | MongoSource


# --- destinations ----------------------------------------------------------------------
class _Destination(_Strict, tag_field="type", kw_only=True):
    pass


class LocalDestination(_Destination, tag="local", kw_only=True):
    path: str


class S3Destination(_Destination, tag="s3", kw_only=True):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id_file: str | None = None
    secret_access_key_file: str | None = None
    credential: str | None = None
    storage_class: str | None = None
    path_style: bool = True
    verify: Literal["checksum", "readback", "size"] = "checksum"
    part_size: Annotated[int, msgspec.Meta(ge=5 * 1024 * 1024)] = 8 * 1024 * 1024
    max_parts: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 10000
    upload_concurrency: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5


class SftpDestination(_Destination, tag="sftp", kw_only=True):
    host: str
    port: Port = 22
    user: str
    key_file: str | None = None
    password_file: str | None = None
    known_hosts: str | None = None
    host_key_fingerprint: str | None = None
    path: str = ""
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    remote_hash: bool = False


DestinationConfig = LocalDestination | S3Destination | SftpDestination


# --- encryption, notifications -----------------------------------------------------------
class EncryptionKeyConfig(_Strict, kw_only=True):
    key_file: str | None = None
    credential: str | None = None
    decrypt_only: bool = False


class _Channel(_Strict, tag_field="type", kw_only=True):
    events: list[str] = []
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class WebhookChannel(_Channel, tag="webhook", kw_only=True):
    url: str
    secret_file: str | None = None


class AppriseChannel(_Channel, tag="apprise", kw_only=True):
    urls: list[str] = []
    urls_file: str | None = None


class PingChannel(_Channel, tag="ping", kw_only=True):
    url: str
    start_url: str | None = None
    success_url: str | None = None
    fail_url: str | None = None
    method: Literal["GET", "POST"] = "POST"


ChannelConfig = WebhookChannel | AppriseChannel | PingChannel


# --- jobs ------------------------------------------------------------------------------
class RetentionPolicy(_Strict, kw_only=True):
    keep_last: NonNegative | None = None
    keep_within: str | None = None
    keep_hourly: NonNegative | None = None
    keep_daily: NonNegative | None = None
    keep_weekly: NonNegative | None = None
    keep_monthly: NonNegative | None = None
    keep_yearly: NonNegative | None = None
    max_delete_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5


class JobConfig(_Strict, kw_only=True):
    source: Name
    destinations: Annotated[list[Name], msgspec.Meta(min_length=1)]
    schedule: str | None = None
    catch_up: bool = True
    random_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    databases: list[str] | None = None
    compression: Literal["none", "gzip", "brotli", "zstd"] = "zstd"
    compression_level: int | None = None
    encryption: Name | None = None
    retention: RetentionPolicy = msgspec.field(default_factory=RetentionPolicy)
    notify: list[Name] = []
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Config(_Strict, kw_only=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    sources: dict[Name, SourceConfig] = {}
    destinations: dict[Name, DestinationConfig] = {}
    encryption: dict[Name, EncryptionKeyConfig] = {}
    notifications: dict[Name, ChannelConfig] = {}
    jobs: dict[Name, JobConfig] = {}
