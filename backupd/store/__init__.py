"""SQLite state: schema and migrations (PRAGMA user_version), and the StateStore."""
