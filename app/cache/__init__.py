"""Caches: Redis in production, an in-process LRU in embedded mode; both degrade instead of failing."""

from app.cache.base import Cache, CacheStats
from app.cache.factory import make_cache
from app.cache.memory import MemoryCache
from app.cache.redis import RedisCache

__all__ = ["Cache", "CacheStats", "MemoryCache", "RedisCache", "make_cache"]
