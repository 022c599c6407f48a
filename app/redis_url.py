"""`RECO_REDIS_URL` forms: one server (`redis://`, `rediss://`, `unix://`) or a Redis Cluster
(`redis+cluster://[user:password@]host:port[,host:port...][?option=value]`, `rediss+cluster://` for TLS)."""

from __future__ import annotations

from urllib.parse import urlsplit

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    """`redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`) names a Redis Cluster."""
    return url.startswith(CLUSTER_SCHEMES)


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(a redis:// URL of the first node, with the user, password and options; every node as (host, port))."""
    scheme, rest = url.split("://", 1)
    base = scheme.removesuffix("+cluster")
    parts = urlsplit("//" + rest)
    auth, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for spec in filter(None, (h.strip() for h in hosts.split(","))):
        host, sep, port = spec.rpartition(":")
        if not sep or "]" in port:  # no port given
            host, port = spec, "6379"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a redis+cluster:// URL lists host:port pairs; {spec!r} has no valid port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("a redis+cluster:// URL needs at least one host:port")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0")
    first_host, first_port = nodes[0]
    first_host = f"[{first_host}]" if ":" in first_host else first_host
    first = f"{base}://{auth + '@' if auth else ''}{first_host}:{first_port}" + (
        f"?{parts.query}" if parts.query else ""
    )
    return first, nodes
