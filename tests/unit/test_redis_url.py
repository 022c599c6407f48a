"""RECO_REDIS_URL: one server or a Redis Cluster (`redis+cluster://host:port[,host:port...]`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.redis_url import is_cluster_url, parse_cluster_url
from app.settings import Settings


def test_cluster_urls_name_every_node_and_keep_credentials_and_options() -> None:
    assert is_cluster_url("redis+cluster://a:7000") and is_cluster_url("rediss+cluster://a:7000")
    assert not is_cluster_url("redis://a:6379/0")
    first, nodes = parse_cluster_url(
        "rediss+cluster://user:pw@h1:7000,h2:7001, [::1]:7002?ssl_cert_reqs=none"
    )
    assert first == "rediss://user:pw@h1:7000?ssl_cert_reqs=none"
    assert nodes == [("h1", 7000), ("h2", 7001), ("::1", 7002)]
    assert parse_cluster_url("redis+cluster://h1/0") == ("redis://h1:6379", [("h1", 6379)])
    assert parse_cluster_url("redis+cluster://[::1]:7000")[0] == "redis://[::1]:7000"


@pytest.mark.parametrize(
    ("url", "prefix", "says"),
    [
        ("redis+cluster://", "", "at least one host:port"),
        ("redis+cluster://h1:port", "", "no valid port"),
        ("redis+cluster://h1:70000", "", "no valid port"),
        ("redis+cluster://h1:7000/2", "", "only database 0"),
        ("memcached://h1", "", "redis+cluster://"),
        ("redis+cluster://h1:7000", "shop{1}:", "may not hold { or }"),
    ],
)
def test_bad_cluster_settings_are_refused_naming_the_field(url: str, prefix: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(redis_url=url, redis_prefix=prefix)
    assert says in str(err.value)
    assert ("redis_url" in str(err.value)) or ("redis_prefix" in str(err.value))


def test_braces_in_the_prefix_are_fine_on_one_server() -> None:
    assert Settings(redis_url="redis://h1:6379/0", redis_prefix="shop{1}:").redis_prefix == "shop{1}:"
