"""Pure logic: retention, schedule calendar, naming, states. No I/O libraries here."""
