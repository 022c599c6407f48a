"""Turn pydantic errors into the API's messages: `events[3].timestamp: what is wrong and what to send`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError


def location(prefix: Sequence[str | int], loc: Sequence[str | int]) -> list[str | int]:
    """The full location of a field in the request body."""
    return [*prefix, *loc]


def dotted(loc: Sequence[str | int]) -> str:
    """`["events", 3, "timestamp"]` -> `events[3].timestamp`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def friendly(err: dict[str, Any]) -> str:
    """A message that says what to change, with the offending value where it is short."""
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    value = err.get("input")
    if kind == "missing":
        return "is required"
    if kind == "finite_number":
        return f"must be a finite number (got {value!r})"
    if kind in ("string_too_short",):
        return "must not be empty"
    if kind in ("string_too_long",):
        limit = (err.get("ctx") or {}).get("max_length")
        return f"must have at most {limit} characters (got {len(value) if isinstance(value, str) else '?'})"
    if kind == "string_type":
        return f"must be a string (got {type(value).__name__})"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number (got {value!r})"[:200]
    if kind in ("datetime_type", "datetime_parsing", "datetime_from_date_parsing"):
        return f"must be an ISO 8601 date-time such as 2026-11-27T10:00:00Z (got {value!r})"[:200]
    if kind == "string_pattern_mismatch":
        pattern = str((err.get("ctx") or {}).get("pattern", ""))
        if "/" in pattern:
            return "must not contain NUL (\\u0000), other control characters or '/'"
        if "\\x1f" in pattern:
            return "must not contain NUL (\\u0000) or other control characters"
        if "\\x00" in pattern:
            return "must not contain NUL (\\u0000) characters"
    ctx = err.get("ctx") or {}
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {value!r})"[:200]
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {ctx.get('le', ctx.get('lt'))} (got {value!r})"[:200]
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {ctx.get('ge', ctx.get('gt'))} (got {value!r})"[:200]
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {value!r})"[:200]
    if kind in ("model_attributes_type", "dict_type", "model_type"):
        return "must be a JSON object"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return "is not a known field: remove it"
    return msg[0].lower() + msg[1:] if msg else "is invalid"


def describe(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Details entries `{"loc", "msg"}` for every error, located from the body's root."""
    out = []
    for err in exc.errors(include_url=False):
        loc = location(prefix, err["loc"])
        out.append({"loc": loc, "msg": friendly(dict(err))})
    return out


def summary(details: list[dict[str, Any]]) -> str:
    """One line: the first problem, and how many more."""
    if not details:
        return "invalid request"
    first = details[0]
    extra = len(details) - 1
    more = f" (and {extra} more problem{'s' if extra > 1 else ''})" if extra else ""
    return f"{dotted(first['loc'])}: {first['msg']}{more}"
