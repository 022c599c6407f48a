"""FAISS item index: build, search with exclusions and allowed masks, add, save/load. No DB, no web, no torch."""

from app.index.config import AUTO_APPROXIMATE_KIND, ConfigKind, IndexConfig, IndexKind, service_index_config
from app.index.item_index import ItemIndex
from app.index.persist import IndexFileError

__all__ = [
    "AUTO_APPROXIMATE_KIND",
    "ConfigKind",
    "IndexConfig",
    "IndexFileError",
    "IndexKind",
    "ItemIndex",
    "service_index_config",
]
