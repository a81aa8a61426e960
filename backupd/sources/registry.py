"""Choose a source adapter from its config section's ``type`` tag."""

from __future__ import annotations

from backupd.adapters import AdapterContext, construct
from backupd.config.model import SourceConfig
from backupd.sources.base import SourceAdapter

SOURCES = {
    "sqlite": "backupd.sources.sqlite:SqliteAdapter",
    "postgresql": "backupd.sources.postgresql:PostgresAdapter",
    "mysql": "backupd.sources.mysql:MysqlAdapter",
    "mariadb": "backupd.sources.mysql:MysqlAdapter",
    "redis": "backupd.sources.redis:RedisAdapter",
    "mongodb": "backupd.sources.mongodb:MongoAdapter",
}


def build_source(name: str, config: SourceConfig, ctx: AdapterContext) -> SourceAdapter:
    """Given a source's name and config, return its adapter (constructed, not connected)."""
    adapter: SourceAdapter = construct(SOURCES, name, config, ctx)
    return adapter
