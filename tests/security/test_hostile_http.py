"""Hostile input through the HTTP API (in-process, on a real database): every refusal is a
precise RFC 9457 problem with the right 4xx status, never a 5xx; storable hostile text is stored
literally; and a fingerprint of the table taken before and after proves nothing changed.

Each test walks a family of the corpus and lists every mishandled request at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
from tests.security.corpus import (
    BAD_IDS,
    FORGED_CURSORS,
    INJECTION,
    OVER_LONG,
    fingerprint,
    is_tag,
    matching_ids,
)

PROBLEM = "application/problem+json"
JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


class Refusals:
    """Send requests; remember every one not answered with the expected problem."""

    def __init__(self, api: httpx.AsyncClient, dsn: str) -> None:
        self.api = api
        self.dsn = dsn
        self.failures: list[str] = []
        self.sent = 0

    async def expect(
        self,
        label: str,
        status: int | tuple[int, ...],
        mentions: str,
        method: str,
        url: str,
        **kwargs: object,
    ) -> httpx.Response | None:
        statuses = (status,) if isinstance(status, int) else status
        self.sent += 1
        before = await fingerprint(self.dsn)
        try:
            answer = await self.api.request(method, url, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            self.failures.append(f"{label}: the request raised {type(exc).__name__}: {exc}"[:300])
            return None
        problem = self._problem(answer)
        if answer.status_code not in statuses:
            self.failures.append(
                f"{label}: {answer.status_code} not {statuses}: {answer.text[:200]}"
            )
        elif problem is None:
            self.failures.append(f"{label}: not a problem document: {answer.text[:200]}")
        elif problem.get("status") != answer.status_code or not problem.get("detail"):
            self.failures.append(f"{label}: incomplete problem {problem}")
        elif not re.search(mentions, json.dumps(problem), re.IGNORECASE):
            self.failures.append(f"{label}: vague problem {problem['detail']!r:.200}")
        if await fingerprint(self.dsn) != before:
            self.failures.append(f"{label}: the table changed")
        return answer

    @staticmethod
    def _problem(answer: httpx.Response) -> dict[str, object] | None:
        if not answer.headers.get("content-type", "").startswith(PROBLEM):
            return None
        try:
            document = answer.json()
        except ValueError:
            return None
        return document if isinstance(document, dict) else None


async def test_bodies(api: httpx.AsyncClient, seeded: str) -> None:
    refusals = Refusals(api, seeded)
    raw_cases: list[tuple[str, int, str, bytes]] = [
        ("empty", 400, "empty", b""),
        ("whitespace", 400, "empty", b"  \n "),
        ("truncated json", 400, "JSON", b'{"name": "a'),
        ("invalid utf-8", 400, "UTF-8", b'{"name": "caf\xe9"}'),
        ("raw NUL byte", 400, "JSON", b'{"name": "a\x00b"}'),
        ("escaped NUL", 422, "NUL", b'{"name": "a\\u0000b"}'),
        ("lone surrogate", 422, "name", b'{"name": "a\\ud800b"}'),
        ("duplicate keys", 422, "duplicate", b'{"name": "a", "name": "b"}'),
        ("NaN", 400, "JSON", b'{"name": NaN}'),
        ("Infinity", 400, "JSON", b'{"name": "a", "tags": Infinity}'),
        ("array", 422, "body", b'["name"]'),
        ("string", 422, "body", b'"name"'),
        ("number", 422, "body", b"1"),
        ("null", 422, "body", b"null"),
        ("deep nesting", 400, "nested|JSON", b"[" * 100_000 + b"]" * 100_000),
        (
            "deep nesting in a field",
            (400, 422),
            "name|nested",
            b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ),
        ("id given", 422, "tutorial_id", b'{"name": "a", "tutorial_id": 1}'),
        ("version given", 422, "version", b'{"name": "a", "version": 99}'),
        ("created_at given", 422, "created_at", b'{"name": "a", "created_at": "2000-01-01"}'),
        ("name null", 422, "name", b'{"name": null}'),
        ("name number", 422, "name", b'{"name": 5}'),
        ("tags string", 422, "tags", b'{"name": "a", "tags": "x"}'),
        ("tag with ;", 422, "tags", b'{"name": "a", "tags": ["a;b"]}'),
        ("url javascript", 422, "url", b'{"name": "a", "url": "javascript:alert(1)"}'),
        (
            "url injection",
            422,
            "url",
            b'{"name": "a", "url": "https://x\'; DROP TABLE tutorials;--"}',
        ),
    ]
    for label, status, mentions, body in raw_cases:
        await refusals.expect(
            f"POST {label}", status, mentions, "POST", "/tutorials", content=body, headers=JSON
        )
        if label not in ("id given", "version given", "created_at given", "name null"):
            await refusals.expect(
                f"PATCH {label}",
                status,
                mentions,
                "PATCH",
                "/tutorials/1",
                content=body,
                headers=MERGE,
            )
    for label, (field, value) in OVER_LONG.items():
        body = json.dumps({"name": "a", field: value}).encode()
        await refusals.expect(
            f"POST {label}", 422, field, "POST", "/tutorials", content=body, headers=JSON
        )
        patch = json.dumps({field: value}).encode()
        await refusals.expect(
            f"PATCH {label}", 422, field, "PATCH", "/tutorials/1", content=patch, headers=MERGE
        )
    assert refusals.failures == []
    assert refusals.sent > 50


async def test_body_size_limit(api: httpx.AsyncClient, seeded: str) -> None:
    refusals = Refusals(api, seeded)
    huge = json.dumps({"name": "a", "description": "d" * (2 * 1024 * 1024)}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(huge), 64 * 1024):
            yield huge[offset : offset + 64 * 1024]

    await refusals.expect(
        "announced 2 MB", 413, "limit", "POST", "/tutorials", content=huge, headers=JSON
    )
    await refusals.expect(
        "chunked 2 MB", 413, "limit", "POST", "/tutorials", content=chunks(), headers=JSON
    )
    await refusals.expect(
        "PATCH 2 MB", 413, "limit", "PATCH", "/tutorials/1", content=huge, headers=MERGE
    )
    assert refusals.failures == []


async def test_content_types(api: httpx.AsyncClient, seeded: str) -> None:
    refusals = Refusals(api, seeded)
    body = b'{"name": "typed"}'
    for label, headers in [
        ("missing", {}),
        ("text/plain", {"Content-Type": "text/plain"}),
        ("form", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("multipart", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("latin-1 json", {"Content-Type": "application/json; charset=latin-1"}),
        ("xml", {"Content-Type": "application/xml"}),
        ("garbage", {"Content-Type": "\x7f;;;=="}),
    ]:
        await refusals.expect(
            f"POST {label}",
            415,
            "application/json",
            "POST",
            "/tutorials",
            content=body,
            headers=headers,
        )
        await refusals.expect(
            f"PATCH {label}",
            415,
            "merge-patch",
            "PATCH",
            "/tutorials/1",
            content=body,
            headers=headers,
        )
    assert refusals.failures == []


async def test_ids_in_paths(api: httpx.AsyncClient, seeded: str) -> None:
    refusals = Refusals(api, seeded)
    for bad in [*BAD_IDS, "%00", "1%00", "1;DROP TABLE tutorials", "1'--"]:
        if not bad.strip():
            continue
        path = "/tutorials/" + (bad if "%" in bad else quote(bad, safe=""))
        for method in ("GET", "PATCH", "DELETE"):
            kwargs: dict[str, object] = {}
            if method == "PATCH":
                kwargs = {"content": b'{"name": "x"}', "headers": MERGE}
            await refusals.expect(
                f"{method} {bad!r}", (404, 422), "tutorial_id|nothing at", method, path, **kwargs
            )
    # 2^63 - 1 is a valid id that no row has yet: 404, not an error.
    await refusals.expect("GET max id", 404, "not found", "GET", f"/tutorials/{2**63 - 1}")
    assert refusals.failures == []


async def test_query_parameters(api: httpx.AsyncClient, seeded: str) -> None:
    refusals = Refusals(api, seeded)
    cases: list[tuple[str, dict[str, object], str]] = [
        ("limit 0", {"limit": "0"}, "limit"),
        ("limit -1", {"limit": "-1"}, "limit"),
        ("limit 101", {"limit": "101"}, "limit"),
        ("limit 2^63", {"limit": str(2**63)}, "limit"),
        ("limit abc", {"limit": "abc"}, "limit"),
        ("limit 1e3", {"limit": "1e3"}, "limit"),
        ("limit injection", {"limit": "1; DROP TABLE tutorials"}, "limit"),
        ("tag ;", {"tag": "a;b"}, "tag"),
        ("tag injection", {"tag": "'; DROP TABLE tutorials; --"}, "tag"),
        ("tag NUL", {"tag": "a\x00"}, "tag"),
        ("tag 65", {"tag": "t" * 65}, "tag"),
        ("51 tags", {"tag": [f"t{i}" for i in range(51)]}, "tag"),
        ("q NUL", {"q": "a\x00b"}, "q"),
        ("q 1001", {"q": "q" * 1001}, "q"),
        ("cursor huge", {"cursor": "A" * 10_000}, "cursor"),
        ("cursor padding", {"cursor": "eyJpIjox==="}, "cursor"),
        ("cursor injection", {"cursor": "1' OR '1'='1"}, "cursor"),
    ]
    cases += [
        (f"cursor {label}", {"cursor": value}, "cursor") for label, value in FORGED_CURSORS.items()
    ]
    for label, params, mentions in cases:
        # A cursor the API did not issue is a 404 (no such page), or a 422 when it is not
        # even made of cursor characters: both documented.
        status = (404, 422) if "cursor" in params else 422
        await refusals.expect(f"list {label}", status, mentions, "GET", "/tutorials", params=params)
        if "q" not in params:
            await refusals.expect(
                f"search {label}",
                status,
                mentions,
                "GET",
                "/tutorials",
                params={"q": "seed", **params},
            )
    # A real cursor, truncated at every length: a refusal or (rarely) still a valid cursor.
    first = await api.get("/tutorials", params={"limit": 1})
    cursor = first.json()["next_cursor"]
    for cut in range(1, len(cursor)):
        answer = await api.get("/tutorials", params={"cursor": cursor[:cut]})
        if answer.status_code not in (200, 404, 422):
            refusals.failures.append(f"cursor cut at {cut}: {answer.status_code}")
    assert refusals.failures == []


async def test_injection_is_stored_literally_and_searched_safely(
    api: httpx.AsyncClient, seeded: str
) -> None:
    before = await fingerprint(seeded)
    for payload in INJECTION:
        created = await api.post(
            "/tutorials", json={"name": payload, "description": payload, "tags": ["x"]}
        )
        assert created.status_code == 201, created.text
        stored = created.json()
        assert (stored["name"], stored["description"]) == (payload.strip(), payload)
        for params in ({"q": payload}, {"q": payload, "tag": "x"}):
            answer = await api.get("/tutorials", params=params)
            assert answer.status_code == 200, (params, answer.text)
            # The payload is searched for as words: exactly the rows those words match.
            found = sorted(item["tutorial_id"] for item in answer.json()["items"])
            assert found == await matching_ids(seeded, payload, params.get("tag")), params
        tag = re.sub("[,;]", "", payload)[:64]
        by_tag = await api.get("/tutorials", params={"tag": tag})
        assert by_tag.status_code == (200 if is_tag(tag) else 422), (tag, by_tag.text)
        if by_tag.status_code == 200:
            assert by_tag.json()["items"] == [], tag  # no row carries it
        middle = await fingerprint(seeded)
        assert middle[0] == before[0] + 1 and middle[2], payload
        assert (await api.delete(f"/tutorials/{stored['tutorial_id']}")).status_code == 204
        assert await fingerprint(seeded) == before, payload


async def test_malformed_conditional_headers(api: httpx.AsyncClient, seeded: str) -> None:
    refusals = Refusals(api, seeded)
    for value in ['"1', '"1" "2"', "\x01", '"1";DROP TABLE tutorials']:
        await refusals.expect(
            f"If-Match {value!r}", 400, "If-Match", "PATCH", "/tutorials/1",
            content=b'{"name": "x"}', headers={**MERGE, "If-Match": value},
        )  # fmt: skip
    # Well-formed tags no version can carry (a bare token such as W/ is read as a tag).
    for value in [f'"{2**63}"', '"-1"', '"0"', '"abc"', "W/"]:
        await refusals.expect(
            f"If-Match {value}", 412, "version", "PATCH", "/tutorials/1",
            content=b'{"name": "x"}', headers={**MERGE, "If-Match": value},
        )  # fmt: skip
    assert refusals.failures == []


async def test_import_route_takes_the_good_rows_and_reports_the_bad(
    api: httpx.AsyncClient, seeded: str
) -> None:
    """Hostile NDJSON lines through POST /tutorials/import: each bad line rejected with its
    line number, the good ones (injection payloads included) stored literally, and the rows
    that were there before untouched."""
    seeded_before = await fingerprint(seeded)
    good = [
        {"name": payload, "url": f"https://import.example/{index}"}
        for index, payload in enumerate(INJECTION)
    ]
    bad_lines = [
        b'{"name": "a\\u0000b"}',
        b'{"name": "a\\ud800b"}',
        b'{"name": "caf\xe9"}',
        b'{"name": NaN}',
        b"not json at all",
        b'{"name": "x", "tutorial_id": 1}',
        b'{"name": "x", "url": "javascript:alert(1)"}',
        b'{"name": "' + b"n" * 300 + b'"}',
        b'"just a string"',
    ]
    body = b"\n".join([*(json.dumps(row).encode() for row in good), *bad_lines]) + b"\n"
    for label, headers in [
        ("missing", {}),
        ("json", JSON),
        ("text/plain", {"Content-Type": "text/plain"}),
    ]:
        refused = await api.post("/tutorials/import", content=body, headers=headers)
        assert refused.status_code == 415, (label, refused.text)
    assert await fingerprint(seeded) == seeded_before
    answer = await api.post(
        "/tutorials/import", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["inserted"] == len(good)
    assert summary["rejected"] == len(bad_lines)
    lines = sorted(error["line"] for error in summary["errors"])
    assert lines == list(range(len(good) + 1, len(good) + len(bad_lines) + 1))
    after = await fingerprint(seeded)
    assert after[0] == seeded_before[0] + len(good)
    stored = await api.get("/tutorials", params={"limit": 100})
    names = {item["name"] for item in stored.json()["items"]}
    assert {row["name"].strip() for row in good} <= names


async def test_import_route_rejects_a_deeply_nested_line(
    api: httpx.AsyncClient, seeded: str
) -> None:
    body = b'{"name": "fine"}\n' + b"[" * 5000 + b"]" * 5000 + b"\n"
    answer = await api.post(
        "/tutorials/import", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["rejected"] == 1 and answer.json()["inserted"] == 1


async def test_import_route_rejects_duplicate_keys_like_post(
    api: httpx.AsyncClient, seeded: str
) -> None:
    before = await fingerprint(seeded)
    line = b'{"name": "first", "name": "second"}'
    posted = await api.post("/tutorials", content=line, headers=JSON)
    imported = await api.post(
        "/tutorials/import", content=line + b"\n", headers={"Content-Type": "application/x-ndjson"}
    )
    assert posted.status_code == 422
    assert imported.status_code == 200 and imported.json()["rejected"] == 1
    assert await fingerprint(seeded) == before
