"""Events: validation, the append-only store and ingestion."""
