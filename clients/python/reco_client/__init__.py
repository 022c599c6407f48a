"""Python client for Reco: `Reco(base_url, key).recommend("u1", k=10)`.

from reco_client import Reco
with Reco("http://127.0.0.1:8000", "KEY") as reco:
    reco.send_events([{"user_id": "u1", "item_id": "sku-9", "type": "view"}])  # batched
    answer = reco.recommend("u1", k=10)
    print([(i.item_id, i.score) for i in answer.items], answer.recommendation_id)
"""

from reco_client._calls import Retry
from reco_client.aio import AsyncReco
from reco_client.client import Reco
from reco_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    RecoConnectionError,
    RecoError,
    ServerError,
    Unauthorized,
    Unavailable,
)
from reco_client.models import (
    Activated,
    Explanation,
    IngestResult,
    Item,
    Job,
    Model,
    ModelList,
    Popular,
    Recommendations,
    RecommendedItem,
    Similar,
    User,
)

__all__ = [
    "Activated",
    "AsyncReco",
    "BadRequest",
    "Conflict",
    "Explanation",
    "Forbidden",
    "IngestResult",
    "Item",
    "Job",
    "Model",
    "ModelList",
    "NotFound",
    "Popular",
    "RateLimited",
    "Reco",
    "RecoConnectionError",
    "RecoError",
    "Recommendations",
    "RecommendedItem",
    "Retry",
    "ServerError",
    "Similar",
    "Unauthorized",
    "Unavailable",
    "User",
]
__version__ = "0.1.0"
