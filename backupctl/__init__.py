"""backupctl: the control client of backupd (imports only backupd.ipc.protocol and backupd.errors)."""
