"""The model registry: which versions exist, their metrics and status, which one is active (database rows)."""
