"""Configuration: msgspec Structs for the TOML config, loading, validation and secrets."""

from backupd.config.load import LoadedConfig, load_config
from backupd.config.model import Config

__all__ = ["Config", "LoadedConfig", "load_config"]
