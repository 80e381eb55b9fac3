"""Bearer tokens for writes: POST / PATCH / DELETE need one when `TUTORIALS_API_TOKENS` is set.

Reads stay open. Tokens are compared in constant time: both sides are hashed first (so the
comparison does not even leak the length) and every configured token is compared, without
stopping at the first match.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.requests import Request

BEARER_SCHEME = "bearerAuth"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tutorials"'}


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class WriteGuard:
    """The configured tokens (as digests) and the check of an `Authorization` header."""

    def __init__(self, tokens: Sequence[SecretStr]) -> None:
        self._digests = [_digest(token.get_secret_value().encode("utf-8")) for token in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        if not self._digests:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = _digest(credentials.strip().encode("latin-1"))
        found = False
        for expected in self._digests:
            found |= hmac.compare_digest(offered, expected)
        return found


def require_writer(request: Request) -> None:
    """Called first by every write handler: 401 with a Bearer challenge unless a token matches."""
    guard: WriteGuard = request.app.state.write_guard
    if guard.enabled and not guard.allows(request.headers.get("authorization")):
        raise HTTPException(
            401,
            "this write needs a valid token: send Authorization: Bearer <token>",
            headers=CHALLENGE,
        )
