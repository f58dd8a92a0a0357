"""Resources, versions, search indexes, blob registry and job rows in SQL (SQLite embedded, PostgreSQL)."""
