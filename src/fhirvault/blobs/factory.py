"""Chooses the BlobStore for the configured STORAGE_MODE."""

from __future__ import annotations

from pathlib import Path

from fhirvault.blobs.base import BlobStore
from fhirvault.config import Settings
from fhirvault.store.database import Database


def open_blob_store(settings: Settings, db: Database) -> BlobStore | None:
    """The store large content goes to; None in `inline` mode, where all content stays in the resources."""
    mode = settings.storage_mode
    if mode == "inline":
        return None
    if mode == "database":
        from fhirvault.blobs.database import DatabaseBlobStore

        return DatabaseBlobStore(db)
    if mode == "filesystem":
        from fhirvault.blobs.filesystem import FilesystemBlobStore

        assert settings.storage_dir is not None
        return FilesystemBlobStore(Path(settings.storage_dir))
    if mode == "s3":
        # Imported lazily: only S3 deployments load the S3 client libraries.
        from fhirvault.blobs.s3 import S3BlobStore  # type: ignore[import-not-found,unused-ignore]

        store: BlobStore = S3BlobStore(settings.s3_endpoint, settings.s3_bucket, settings.s3_region,
                                       settings.s3_access_key, settings.s3_secret_key)
        return store
    raise ValueError(f"Unknown storage mode {mode!r}")
