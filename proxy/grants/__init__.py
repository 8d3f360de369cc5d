"""Requests and grants: the lifecycle (one transition table), the checks and decisions it applies,
and the state store behind one protocol (SQLite today)."""
