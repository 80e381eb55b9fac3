"""The page's sign-in: a token exchanged for a session cookie, and the CSRF check of writes.

When `TUTORIALS_API_TOKENS` is set, writes need a token. API clients send it as a bearer
header; a person on the page types it once into the sign-in form, and the page gets:

- a session cookie, `__Host-tutorials-session`: `Secure`, `HttpOnly` (no script can read it),
  `SameSite=Strict` (no other site's request carries it), `Path=/`, no `Domain` (the `__Host-`
  prefix makes the browser insist on all of that). It holds no token: an expiry, a random
  nonce and a MAC of both keyed by the token, so it is worthless once the token is removed
  from the configuration, and it says nothing about the token if stolen;
- a CSRF token, in the cookie `__Host-tutorials-csrf` the page's script can read: a second
  MAC of the same nonce. Every write from the page sends it back in the `X-CSRF-Token` header.
  Another origin can neither read it nor make the browser add that header, and it cannot be
  forged without the token's key (a signed double-submit, OWASP's recommendation).

A write is allowed when both are valid and belong together (`check`): the pair stands in for
the bearer header. Everything here is pure (no request, no clock, no randomness of its own),
so `api.security.WriteGuardMiddleware` calls `check` and the page's routes call `issue`.
Without tokens configured, none of it runs: writes need nothing, as before.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

SESSION_COOKIE = "__Host-tutorials-session"
CSRF_COOKIE = "__Host-tutorials-csrf"
CSRF_HEADER = "x-csrf-token"
#: How long a sign-in lasts, in seconds.
LIFETIME = 12 * 3600
NONCE_BYTES = 18

_VERSION = "v1"
_SESSION = re.compile(r"v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{24})\.([A-Za-z0-9_-]{43})")
_CSRF = re.compile(r"[A-Za-z0-9_-]{43}")


class Verdict(enum.Enum):
    """What a request's cookie and header say."""

    NO_SESSION = "no session cookie"
    INVALID = "a session cookie that is expired, altered, or of a token no longer configured"
    CSRF_REFUSED = "a valid session without its CSRF token"
    SIGNED_IN = "a valid session and its CSRF token"


@dataclass(frozen=True)
class Session:
    """What a sign-in sets: the two cookies' values, and when they expire (Unix time)."""

    cookie: str
    csrf: str
    expires: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def session_key(token_digest: bytes) -> bytes:
    """The MAC key of sessions signed in with a token, from its SHA-256 digest (what
    `WriteGuard` keeps): never the digest itself, so a session MAC says nothing about it."""
    return hmac.new(token_digest, b"tutorials page session " + _VERSION.encode(), "sha256").digest()


def token_key(token: str) -> bytes:
    """`session_key` of a token as typed (the sign-in form's)."""
    return session_key(hashlib.sha256(token.strip().encode("utf-8")).digest())


def _session_mac(key: bytes, expires: int, nonce: str) -> str:
    return _b64(hmac.new(key, f"session|{expires}|{nonce}".encode(), "sha256").digest())


def _csrf_mac(key: bytes, nonce: str) -> str:
    return _b64(hmac.new(key, f"csrf|{nonce}".encode(), "sha256").digest())


def issue(key: bytes, *, now: float, nonce: bytes) -> Session:
    """A new session for the token whose `session_key` is `key`, from `nonce` (random bytes,
    `NONCE_BYTES` of them: `secrets.token_bytes`), lasting `LIFETIME` from `now`."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce has {NONCE_BYTES} bytes")
    expires = int(now) + LIFETIME
    encoded = _b64(nonce)
    cookie = f"{_VERSION}.{expires}.{encoded}.{_session_mac(key, expires, encoded)}"
    return Session(cookie, _csrf_mac(key, encoded), expires)


def check(keys: Sequence[bytes], cookie: str | None, csrf: str | None, *, now: float) -> Verdict:
    """Whether a session cookie and a CSRF header stand in for a token.

    `keys`: the `session_key` of every configured token. Every key is tried, without stopping
    at the first match, and MACs are compared in constant time.
    """
    if not cookie:
        return Verdict.NO_SESSION
    found = _SESSION.fullmatch(cookie)
    if found is None or not keys:
        return Verdict.INVALID
    expires, nonce, mac = int(found.group(1)), found.group(2), found.group(3)
    try:
        base64.urlsafe_b64decode(nonce)
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern admits only base64url
        return Verdict.INVALID
    session_ok = False
    csrf_ok = False
    offered = csrf if csrf is not None and _CSRF.fullmatch(csrf) else ""
    for key in keys:
        matches = hmac.compare_digest(_session_mac(key, expires, nonce), mac)
        session_ok |= matches
        csrf_ok |= matches & hmac.compare_digest(_csrf_mac(key, nonce), offered or "-" * 43)
    if not session_ok or expires <= now:
        return Verdict.INVALID
    return Verdict.SIGNED_IN if csrf_ok else Verdict.CSRF_REFUSED


def cookie_headers(session: Session | None, *, now: float) -> list[str]:
    """The two `Set-Cookie` values of a sign-in (or, for None, of a sign-out: both expired)."""
    if session is None:
        gone = "Max-Age=0; Path=/; Secure; SameSite=Strict"
        return [f"{SESSION_COOKIE}=; {gone}; HttpOnly", f"{CSRF_COOKIE}=; {gone}"]
    age = max(0, session.expires - int(now))
    common = f"Max-Age={age}; Path=/; Secure; SameSite=Strict"
    return [
        f"{SESSION_COOKIE}={session.cookie}; {common}; HttpOnly",
        f"{CSRF_COOKIE}={session.csrf}; {common}",
    ]
