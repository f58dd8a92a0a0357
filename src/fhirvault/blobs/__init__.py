"""Binary content storage: the BlobStore interface and one module per backend."""
