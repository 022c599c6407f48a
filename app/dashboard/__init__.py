"""The operator's dashboard: server-rendered pages under /dashboard and their JSON under /v1/admin/stats."""

from __future__ import annotations

from app.dashboard import pages, stats

router = pages.router
stats_router = stats.router

__all__ = ["router", "stats_router"]
