"""Pick the cache implementation from settings."""

from __future__ import annotations

from app.cache.base import Cache
from app.cache.memory import MemoryCache
from app.cache.redis import RedisCache
from app.settings import Settings


def make_cache(settings: Settings) -> Cache:
    """Redis when RECO_REDIS_URL is set, otherwise the in-process cache."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryCache()
