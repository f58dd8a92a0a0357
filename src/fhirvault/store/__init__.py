"""Resources, versions, search indexes and blob registry in SQL (SQLite embedded, PostgreSQL)."""

# Modules that own tables register their migration steps on import; import them here so that the
# list of steps is whole whoever imports the schema.
from fhirvault.store import blobs as _blobs  # noqa: E402, F401
