"""Use cases: resources, search, bundles, binaries, operations, ingestion."""
