"""The background trainer: job queue loop, training pipeline, quality gate, schedule and retention."""
