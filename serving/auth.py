"""API keys: bearer tokens checked against SHA-256 hashes from the config.

Only hashes are configured, so the Serve config (often committed, or visible in the Ray
dashboard) never holds a usable key.  Keys are random 256-bit tokens, so one fast hash is
enough: a slow password hash guards against guessing low-entropy passwords, which these are not.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from serving.errors import error_json
from serving.http import route_path

PREFIX = "sha256:"
# Liveness probes carry no credentials, and a browser opening /docs cannot send one: the API's
# description holds nothing secret, and /docs' "Authorize" button then sends the key for each call.
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


def new_key() -> tuple[str, str]:
    """(key to give the caller, hash to put under `args.auth.api_key_hashes`)."""
    key = "sf_" + secrets.token_urlsafe(32)
    return key, hash_key(key)


def hash_key(key: str) -> str:
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def is_valid(key: str, hashes: list[str]) -> bool:
    digest = hash_key(key)
    # Compare against every hash, in constant time each, so timing says nothing about which matched.
    return any([hmac.compare_digest(digest, h) for h in hashes])


class ApiKeyMiddleware:
    """Refuse requests without a valid `Authorization: Bearer KEY` with 401, before the body is
    read, when `app.state.api_key_hashes` (set when the ingress replica starts) is non-empty."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        hashes = getattr(scope["app"].state, "api_key_hashes", None)
        if scope["type"] != "http" or not hashes or route_path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            response = error_json(
                401,
                "unauthorized",
                "this service needs an API key: send 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not is_valid(key.strip(), hashes):
            response = error_json(
                401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )
        else:
            return await self.app(scope, receive, send)
        return await response(scope, receive, send)
