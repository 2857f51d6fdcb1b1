"""Database models for queue and platform state (SQLite by default)."""
