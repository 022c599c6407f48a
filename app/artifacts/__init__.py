"""Versioned model files: manifest (JSON), atomic write, verified load."""

from app.artifacts.store import ArtifactError, LoadedModel, list_versions, load_version, save_version

__all__ = ["ArtifactError", "LoadedModel", "list_versions", "load_version", "save_version"]
