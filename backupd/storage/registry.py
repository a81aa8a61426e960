"""Choose a storage adapter from its config section's ``type`` tag."""

from __future__ import annotations

from backupd.adapters import AdapterContext, construct
from backupd.config.model import DestinationConfig
from backupd.storage.base import StorageAdapter

STORAGES = {
    "local": "backupd.storage.local:LocalStorage",
    "s3": "backupd.storage.s3:S3Storage",
    "sftp": "backupd.storage.sftp:SftpStorage",
}


def build_storage(name: str, config: DestinationConfig, ctx: AdapterContext) -> StorageAdapter:
    """Given a destination's name and config, return its adapter (not yet connected)."""
    adapter: StorageAdapter = construct(STORAGES, name, config, ctx)
    return adapter
