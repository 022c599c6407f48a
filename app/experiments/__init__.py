"""Experiments: stable variant assignment (assign) and the A/B report math (stats)."""
