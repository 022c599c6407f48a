"""Signed user tokens: what a shop's server gives its page so that a publishable key may only name that user.

Format: `base64url(payload) + "." + base64url(HMAC-SHA256(secret, base64url(payload)))`, no padding, where
payload is the compact JSON `{"uid": "<user id>", "exp": <unix seconds>}`. The secret is the service-wide
RECO_USER_TOKEN_SECRET, which the shop's server holds too. Issue one per page view (or per session):

    from app.auth.user_tokens import issue
    token = issue("u42", secret=os.environ["RECO_USER_TOKEN_SECRET"], ttl_s=3600)

or from a shell: `reco keys user-token --user u42 --ttl 3600`. Any language can make one: it is 10 lines of
HMAC (README "Publishable keys and rate limits").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

HEADER = "X-Reco-User-Token"
QUERY = "user_token"  # for navigator.sendBeacon, which cannot set headers
MAX_TOKEN_CHARS = 2048
MAX_TTL_S = 30 * 86400


class TokenError(ValueError):
    """A token that is malformed, forged or expired; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str | bytes, body: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def issue(user_id: str, secret: str | bytes, ttl_s: int = 3600, *, now: float | None = None) -> str:
    """A token for `user_id` that expires `ttl_s` seconds from now (1 s to 30 days)."""
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= 256:
        raise ValueError("user_id: must be a string of 1 to 256 characters")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s: must be from 1 to {MAX_TTL_S} seconds")
    exp = int((time.time() if now is None else now) + ttl_s)
    body = _b64(json.dumps({"uid": user_id, "exp": exp}, separators=(",", ":")).encode())
    return f"{body}.{_sign(secret, body)}"


def verify(token: str, secret: str | bytes, *, now: float | None = None) -> str:
    """The user id a valid, unexpired token names; TokenError otherwise (the signature is compared in
    constant time before the payload is read)."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise TokenError("not a user token: expected base64url(payload).base64url(signature)")
    body, signature = token.split(".")
    if not hmac.compare_digest(_sign(secret, body), signature):
        raise TokenError("the signature does not match: issue tokens with RECO_USER_TOKEN_SECRET")
    try:
        payload = json.loads(_unb64(body))
    except ValueError:
        raise TokenError("the payload is not base64url JSON") from None
    uid, exp = (payload.get("uid"), payload.get("exp")) if isinstance(payload, dict) else (None, None)
    if not isinstance(uid, str) or not uid or not isinstance(exp, int | float):
        raise TokenError('the payload must be {"uid": "<user id>", "exp": <unix seconds>}')
    if exp <= (time.time() if now is None else now):
        raise TokenError("expired: ask the shop's server for a new one")
    return uid
