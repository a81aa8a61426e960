"""Re-export of the shared records, so store code reads naturally."""

from backupd.domain.records import BackupRecord, ExecutionRecord, LogLine

__all__ = ["BackupRecord", "ExecutionRecord", "LogLine"]
