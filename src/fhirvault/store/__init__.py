"""Resources, versions, search indexes and blob registry in SQL (SQLite embedded, PostgreSQL)."""
