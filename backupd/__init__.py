"""backupd: a systemd-native daemon that backs up databases on a schedule."""

__version__ = "0.1.0"
