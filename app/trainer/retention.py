"""Artifact housekeeping: keep the newest N versions (never the active one), drop abandoned temp dirs."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Collection
from pathlib import Path

from app.artifacts import list_versions

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"


def prune_versions(artifact_dir: Path, keep: int, protected: Collection[str]) -> list[str]:
    """Delete version directories beyond the newest `keep`, sparing `protected`; returns the deleted names."""
    if keep < 1:
        raise ValueError(f"keep: {keep} must be >= 1")
    versions = list_versions(artifact_dir)  # oldest first; names sort by time
    doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in protected]
    for version in doomed:
        # Rename first, so a half-deleted directory is never mistaken for a version.
        trash = artifact_dir / f"{TEMP_PREFIX}deleted-{version}"
        try:
            (artifact_dir / version).rename(trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        log.info("retention: deleted model version %s", version)
    return doomed


def clean_temp_dirs(artifact_dir: Path, older_than_s: float) -> list[str]:
    """Remove temporary directories left by interrupted writes, once older than `older_than_s`."""
    if not artifact_dir.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for path in artifact_dir.iterdir():
        if path.is_dir() and path.name.startswith(TEMP_PREFIX):
            try:
                if path.stat().st_mtime > cutoff:
                    continue  # perhaps still being written by another worker
            except FileNotFoundError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("removed %d abandoned temporary artifact dir(s): %s", len(removed), ", ".join(removed))
    return removed
