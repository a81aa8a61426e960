"""Choose a source adapter from its config section's ``type`` tag."""

from __future__ import annotations

import importlib

from backupd.adapters import AdapterContext
from backupd.config.model import SourceConfig
from backupd.sources.base import SourceAdapter

# type tag -> "module:Class"; modules are imported on first use so that a host without,
# say, MongoDB tools pays nothing for that engine.
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
    tag = type(config).__struct_config__.tag
    module, cls = SOURCES[str(tag)].split(":")
    factory = getattr(importlib.import_module(module), cls)
    adapter: SourceAdapter = factory(name, config, ctx)
    return adapter
