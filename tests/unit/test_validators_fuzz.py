"""Property test: the event and item validators, and the body parser, given arbitrary JSON (deep nesting, huge
numbers, NUL, lone surrogates) answer a model or our validation error, never another exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api.deps import parse_json
from app.catalog.schemas import ItemIn
from app.errors import ValidationFailed
from app.events.schemas import EventIn
from app.validation import describe, summary

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(categories=["Cs", "Cc"]),  # lone surrogates, NUL and other control characters
        st.characters(min_codepoint=0x20, max_codepoint=0x7F),
        st.characters(),
    ),
    max_size=40,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-27T10:00:00Z", "1e999"]
    ),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def deep(levels: int) -> Any:
    node: Any = {}
    for _ in range(levels):
        node = {"a": node} if levels % 2 else [node]
    return node


FIELDS = [
    "event_id",
    "user_id",
    "item_id",
    "type",
    "value",
    "timestamp",
    "title",
    "categories",
    "tags",
    "price",
    "available",
    "published_at",
    "attributes",
]
OBJECTS = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(FIELDS) | TEXT, JSON | st.integers(0, 400).map(deep), max_size=8),
)


def _check(model: Any, value: Any) -> None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        details = describe(exc, ["events", 0])
        assert details and summary(details)


@settings(max_examples=300, deadline=None)
@given(OBJECTS)
def test_event_validator_never_raises_unexpectedly(value: Any) -> None:
    _check(EventIn, value)


@settings(max_examples=300, deadline=None)
@given(OBJECTS)
def test_item_validator_never_raises_unexpectedly(value: Any) -> None:
    _check(ItemIn, value)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.integers(0, 20_000).map(lambda n: b"[" * n + b"]" * n),
    )
)
def test_body_parser_answers_json_or_our_error(raw: bytes) -> None:
    try:
        parse_json(raw)
    except ValidationFailed as exc:
        assert exc.message.startswith("body:")


def test_validators_survive_nesting_deeper_than_the_recursion_limit() -> None:
    for model in (EventIn, ItemIn):
        _check(model, {"user_id": deep(2000), "item_id": "i", "type": "view", "attributes": deep(2001)})
