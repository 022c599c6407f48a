"""/v1/items: the catalog."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import KeyFirstRoute, batch_list, get_state, read_json, require
from app.api.params import ItemIdPath, label_query
from app.catalog import repository, service
from app.catalog.schemas import ItemFields, ItemIn, ItemOut, ItemPage
from app.db.engine import run_transaction
from app.db.tables import Item
from app.errors import NotFound, ValidationFailed
from app.events.schemas import IngestResult, Rejection
from app.validation import describe, dotted

router = APIRouter(tags=["items"], route_class=KeyFirstRoute)
ItemId = ItemIdPath


def item_out(item: Item) -> ItemOut:
    """The API view of a stored item."""
    return ItemOut(
        item_id=item.item_id,
        title=item.title,
        categories=list(item.categories or []),
        tags=list(item.tags or []),
        price=item.price,
        available=item.available,
        published_at=item.published_at,
        attributes=dict(item.attributes or {}),
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


def _hides(fields: dict[str, Any]) -> bool:
    return fields.get("available") is False


@router.put("/v1/items/{item_id}", response_model=ItemOut, dependencies=[Depends(require("ingest"))])
def put_item(item_id: ItemId, body: ItemFields, request: Request) -> ItemOut:
    """Create or update one item; fields left out keep their value; a deleted item is restored."""
    state = get_state(request)
    fields = body.model_dump(exclude_unset=True)
    item = run_transaction(
        state.sessions, lambda s: item_out(repository.upsert_items(s, [(item_id, fields)])[0])
    )
    if _hides(fields):
        service.after_items_hidden(state.cache)
    return item


@router.post(
    "/v1/items",
    response_model=IngestResult,
    dependencies=[Depends(require("ingest"))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemBatchIn"}}},
        }
    },
)
async def post_items(request: Request) -> IngestResult:
    """Upsert a batch of items; each is validated on its own (a repeated item_id: applied in order)."""
    state = get_state(request)
    raw = batch_list(
        await read_json(request, state.settings.max_body_bytes), "items", state.settings.max_batch
    )

    def work() -> IngestResult:
        rows: dict[str, dict[str, Any]] = {}
        rejected: list[Rejection] = []
        for index, entry in enumerate(raw):
            try:
                item = ItemIn.model_validate(entry)
            except ValidationError as exc:
                detail = describe(exc, ["items", index])[0]
                rejected.append(
                    Rejection(
                        index=index, error=f"{dotted(detail['loc'][2:])}: {detail['msg']}", loc=detail["loc"]
                    )
                )
                continue
            # a repeated item_id is applied in order, like successive PUTs: later fields win, others stay
            rows.setdefault(item.item_id, {}).update(item.model_dump(exclude_unset=True, exclude={"item_id"}))
        if raw and not rows:
            details = [{"loc": r.loc, "msg": r.error} for r in rejected]
            raise ValidationFailed(f"items[{rejected[0].index}].{rejected[0].error}", details=details)
        run_transaction(state.sessions, lambda s: repository.upsert_items(s, list(rows.items())))
        if any(_hides(f) for f in rows.values()):
            service.after_items_hidden(state.cache)
        accepted = len(rows)
        return IngestResult(
            accepted=accepted, duplicates=len(raw) - len(rejected) - accepted, rejected=rejected
        )

    return await run_in_threadpool(work)


@router.get("/v1/items/{item_id}", response_model=ItemOut, dependencies=[Depends(require("read"))])
def get_item(item_id: ItemId, request: Request) -> ItemOut:
    """One item (deleted items are not found)."""
    with get_state(request).sessions() as session:
        item = repository.get_item(session, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} not found")
        return item_out(item)


def _encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"i:{row_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "i":
            raise ValueError(kind)
        row_id = int(value)
        if not 0 <= row_id < 2**63:  # a row id the store can compare with (no integer overflow)
            raise ValueError(value)
        return row_id
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed(
            "cursor: not a cursor this service issued; pass `next_cursor` from the previous page",
            details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        ) from None


@router.get("/v1/items", response_model=ItemPage, dependencies=[Depends(require("read"))])
def list_items(
    request: Request,
    category: Annotated[str | None, label_query(128)] = None,
    available: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> ItemPage:
    """Items in a stable order, a page at a time."""
    after = _decode_cursor(cursor) if cursor else 0
    with get_state(request).sessions() as session:
        rows = repository.list_items(
            session, after_id=after, limit=limit + 1, category=category, available=available
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return ItemPage(
            items=[item_out(r) for r in rows], next_cursor=_encode_cursor(rows[-1].id) if more else None
        )


@router.delete("/v1/items/{item_id}", status_code=204, dependencies=[Depends(require("ingest"))])
def delete_item(item_id: ItemId, request: Request) -> Response:
    """Hide an item: it is never recommended again; its events stay."""
    state = get_state(request)
    if not run_transaction(state.sessions, lambda s: repository.hide_item(s, item_id)):
        raise NotFound(f"item {item_id!r} not found")
    service.after_items_hidden(state.cache)
    return Response(status_code=204)
