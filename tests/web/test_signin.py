"""The page's sign-in: the pure session and CSRF check (`tutorials.web.signin`), and the
routes that set it (`POST /session`, `DELETE /session`) and honour it (every write)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from tests.api.conftest import ClientFactory

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.settings import Settings
from tutorials.web import signin
from tutorials.web.signin import Verdict

NOW = 1_800_000_000.0
NONCE = bytes(range(signin.NONCE_BYTES))
KEY = signin.token_key("secret-token")
OTHER = signin.token_key("another-token")


def test_a_fresh_session_with_its_csrf_token_is_signed_in() -> None:
    session = signin.issue(KEY, now=NOW, nonce=NONCE)
    assert signin.check([OTHER, KEY], session.cookie, session.csrf, now=NOW) is Verdict.SIGNED_IN
    assert session.expires == int(NOW) + signin.LIFETIME
    assert "secret-token" not in session.cookie + session.csrf


@pytest.mark.parametrize("csrf", [None, "", "A" * 43, "not base64!", "x" * 2000])
def test_a_session_without_its_csrf_token_is_refused_as_csrf(csrf: str | None) -> None:
    session = signin.issue(KEY, now=NOW, nonce=NONCE)
    assert signin.check([KEY], session.cookie, csrf, now=NOW) is Verdict.CSRF_REFUSED


def test_the_csrf_token_of_another_session_does_not_fit() -> None:
    mine = signin.issue(KEY, now=NOW, nonce=NONCE)
    theirs = signin.issue(KEY, now=NOW, nonce=bytes(signin.NONCE_BYTES))
    assert signin.check([KEY], mine.cookie, theirs.csrf, now=NOW) is Verdict.CSRF_REFUSED


def test_expired_altered_or_foreign_sessions_are_invalid() -> None:
    session = signin.issue(KEY, now=NOW, nonce=NONCE)
    later = NOW + signin.LIFETIME
    version, expires, nonce, mac = session.cookie.split(".")
    longer = f"{version}.{int(expires) + 3600}.{nonce}.{mac}"
    flipped = session.cookie[:-1] + ("A" if session.cookie[-1] != "A" else "B")
    for cookie, keys, now in [
        (session.cookie, [KEY], later),  # expired
        (longer, [KEY], NOW),  # expiry moved
        (flipped, [KEY], NOW),  # MAC altered
        (session.cookie, [OTHER], NOW),  # its token is no longer configured
        (session.cookie, [], NOW),
        ("garbage", [KEY], NOW),
        ("v1." + "9" * 13 + ".x.y", [KEY], NOW),
    ]:
        assert signin.check(keys, cookie, session.csrf, now=now) is Verdict.INVALID, cookie


def test_no_cookie_is_no_session() -> None:
    assert signin.check([KEY], None, "x", now=NOW) is Verdict.NO_SESSION
    assert signin.check([KEY], "", "x", now=NOW) is Verdict.NO_SESSION


def test_the_key_comes_from_the_token_digest_the_write_guard_keeps() -> None:
    digest = hashlib.sha256(b"secret-token").digest()
    assert signin.session_key(digest) == KEY
    assert digest != KEY


def test_a_nonce_must_have_its_length() -> None:
    with pytest.raises(ValueError):
        signin.issue(KEY, now=NOW, nonce=b"short")


def test_the_cookies_are_secure_httponly_and_strict() -> None:
    session = signin.issue(KEY, now=NOW, nonce=NONCE)
    session_cookie, csrf_cookie = signin.cookie_headers(session, now=NOW)
    for cookie in (session_cookie, csrf_cookie):
        attributes = cookie.split("; ")
        assert {"Secure", "SameSite=Strict", "Path=/", f"Max-Age={signin.LIFETIME}"} <= set(
            attributes
        )
        assert not any(attribute.startswith("Domain") for attribute in attributes)
    assert session_cookie.startswith(f"{signin.SESSION_COOKIE}={session.cookie};")
    assert "HttpOnly" in session_cookie.split("; ")
    assert "HttpOnly" not in csrf_cookie.split("; ")  # the page's script reads it
    assert all("Max-Age=0" in cookie for cookie in signin.cookie_headers(None, now=NOW))


# --- Over HTTP ---------------------------------------------------------------------------------

TOKEN = "the-token"


@pytest.fixture
async def secured(
    settings: Settings, database: Database, make_client: ClientFactory
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"api_tokens": [SecretStr(TOKEN)]}), database)
    async with make_client(app) as client:
        yield client


async def _sign_in(client: httpx.AsyncClient) -> tuple[str, str]:
    """Sign in; the `Cookie` header the browser would send back, and the CSRF token."""
    response = await client.post("/session", json={"token": TOKEN})
    assert response.status_code == 204, response.text
    values = dict(
        cookie.split(";")[0].split("=", 1) for cookie in response.headers.get_list("set-cookie")
    )
    cookie = "; ".join(f"{name}={value}" for name, value in values.items())
    return cookie, values[signin.CSRF_COOKIE]


async def test_a_signed_in_page_writes_with_its_cookie_and_csrf_header(
    secured: httpx.AsyncClient,
) -> None:
    cookie, csrf = await _sign_in(secured)
    headers = {"Cookie": cookie, "X-CSRF-Token": csrf}
    created = await secured.post("/tutorials", json={"name": "by cookie"}, headers=headers)
    assert created.status_code == 201
    location = created.headers["location"]
    patched = await secured.patch(location, json={"description": "d"}, headers=headers)
    assert patched.status_code == 200
    imported = await secured.post(
        "/tutorials/import",
        content=b"name\nimported\n",
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 200
    assert (await secured.delete(location, headers=headers)).status_code == 204


async def test_a_cookie_without_its_csrf_header_is_refused_with_403(
    secured: httpx.AsyncClient,
) -> None:
    cookie, _ = await _sign_in(secured)
    for headers in ({"Cookie": cookie}, {"Cookie": cookie, "X-CSRF-Token": "A" * 43}):
        refused = await secured.post("/tutorials", json={"name": "forged"}, headers=headers)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert "CSRF" in refused.json()["detail"]
    assert (await secured.get("/tutorials")).json()["items"] == []


async def test_without_a_session_writes_still_need_the_bearer_token(
    secured: httpx.AsyncClient,
) -> None:
    _, csrf = await _sign_in(secured)
    alone = await secured.post("/tutorials", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert alone.status_code == 401
    assert alone.headers["www-authenticate"].startswith("Bearer")
    bearer = await secured.post(
        "/tutorials", json={"name": "x"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bearer.status_code == 201


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"token": "wrong"}}, 401),
        ({"json": {"token": "tökén"}}, 401),
        ({"json": {"token": ""}}, 401),
        ({"json": ["the-token"]}, 401),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 401),
        ({"data": {"token": TOKEN}}, 415),  # a form: what another site could post
        ({"json": {"token": TOKEN}, "headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
    ],
)
async def test_a_sign_in_is_refused_in_plain_problem_details(
    secured: httpx.AsyncClient, kwargs: dict[str, object], status: int
) -> None:
    response = await secured.post("/session", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert "set-cookie" not in response.headers
    if status == 401:  # like every write refused for want of a token
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_sign_out_clears_both_cookies(secured: httpx.AsyncClient) -> None:
    cookie, _ = await _sign_in(secured)
    nobody = await secured.delete("/session")
    assert nobody.status_code == 401
    response = await secured.delete("/session", headers={"Cookie": cookie})
    assert response.status_code == 204
    cookies = response.headers.get_list("set-cookie")
    assert [cookie.split("=")[0] for cookie in cookies] == [
        signin.SESSION_COOKIE,
        signin.CSRF_COOKIE,
    ]
    assert all("Max-Age=0" in cookie for cookie in cookies)


async def test_without_tokens_nothing_changes(client: httpx.AsyncClient, app: FastAPI) -> None:
    assert (await client.post("/session", json={"token": "x"})).status_code == 404
    assert (await client.delete("/session")).status_code == 404
    written = await client.post(
        "/tutorials", json={"name": "open"}, headers={"Cookie": f"{signin.SESSION_COOKIE}=junk"}
    )
    assert written.status_code == 201
    assert "/session" not in app.openapi()["paths"]
