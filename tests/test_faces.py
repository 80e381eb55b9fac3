"""The same input gets the same outcome on every face.

Each case runs one operation through the library, the command line, the HTTP API and (for
writes) bulk import, on one real database, and asserts that every face reports the same
outcome: the same stored values, or the same kind of refusal. The cases are the ones where the
faces used to disagree (issue: "one data path ... one service that every face shares").
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from tutorials import library
from tutorials.api import create_app
from tutorials.cli import app as cli_app
from tutorials.db.database import Database
from tutorials.db.session import close_default_database
from tutorials.errors import Conflict, InvalidInput, NotFound, StaleVersion, TutorialsError
from tutorials.schemas import TutorialCreate, TutorialPatch
from tutorials.settings import Settings, get_settings
from tutorials.transfer import export_rows, import_file, import_rows

#: What a face answered, reduced to what must agree: ("ok", value) or ("refused", kind).
Outcome = tuple[str, Any]

_KINDS = {InvalidInput: "invalid", NotFound: "not found", Conflict: "conflict"}
_EXIT_KINDS = {2: "invalid", 3: "not found", 4: "conflict or stale"}
_HTTP_KINDS = {422: "invalid", 404: "not found", 409: "conflict", 412: "stale"}


def _kind(error: TutorialsError) -> str:
    if isinstance(error, StaleVersion):
        return "stale"
    for cls, kind in _KINDS.items():
        if isinstance(error, cls):
            return kind
    return type(error).__name__


@dataclass
class Faces:
    """One database, reached through every face."""

    database: Database
    client: httpx.AsyncClient
    dsn: str

    # --- the command line (its own process state: run in a thread, as a shell would) ---------

    async def cli(self, *args: str) -> tuple[int, str, str]:
        def run() -> tuple[int, str, str]:
            result = CliRunner().invoke(cli_app, list(args))
            return result.exit_code, result.stdout, result.stderr

        return await asyncio.to_thread(run)

    async def cli_json(self, command: str, *args: str) -> Outcome:
        code, out, err = await self.cli(command, "--json", *args)
        if code != 0:
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
            return ("refused", _EXIT_KINDS.get(code, code))
        return ("ok", json.loads(out))

    # --- the library ---------------------------------------------------------------------

    @staticmethod
    async def library(call: Any) -> Outcome:
        try:
            result = await call
        except TutorialsError as error:
            return ("refused", _kind(error))
        return ("ok", result)

    # --- HTTP ------------------------------------------------------------------------------

    async def http(self, method: str, path: str, **kwargs: Any) -> Outcome:
        response = await self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            return ("refused", _HTTP_KINDS.get(response.status_code, response.status_code))
        return ("ok", response.json() if response.content else None)

    # --- bulk import ------------------------------------------------------------------------

    async def import_ndjson(self, *rows: dict[str, Any]) -> Any:
        body = "\n".join(json.dumps(row) for row in rows).encode()
        return await import_file(self.database, io.BytesIO(body), format="ndjson")

    async def rows(self) -> list[dict[str, Any]]:
        connection = await asyncpg.connect(self.dsn)
        try:
            found = await connection.fetch(
                "SELECT tutorial_id, name, url, description, tags, version FROM tutorials "
                "ORDER BY tutorial_id"
            )
        finally:
            await connection.close()
        return [dict(row) for row in found]

    async def clear(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute("TRUNCATE tutorials RESTART IDENTITY")
        finally:
            await connection.close()


@pytest.fixture
async def faces(
    database_url: URL, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Faces]:
    """Every face on this test's database, with a search bound of 3 everywhere."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("TUTORIALS_AUTO_MIGRATE", "false")
    monkeypatch.setenv("TUTORIALS_SEARCH_CANDIDATES", "3")
    get_settings.cache_clear()
    settings = Settings(_env_file=None, auto_migrate=False, search_candidates=3)  # type: ignore[call-arg]
    database = Database.from_url(database_url, settings)
    transport = httpx.ASGITransport(app=create_app(settings, database))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield Faces(database, client, dsn)
    finally:
        await close_default_database()
        await database.dispose()
        get_settings.cache_clear()


def _stored(outcome: Outcome) -> Outcome:
    """A created/updated tutorial's content, whatever the face's shape for it."""
    status, value = outcome
    if status != "ok":
        return outcome
    get = value.get if isinstance(value, dict) else lambda key: getattr(value, key)
    return ("ok", (get("name"), get("url"), get("description"), get("tags"), get("version")))


# --- URLs: one identity, one set of refusals -----------------------------------------------------

REFUSED_URLS = [
    "https://user:secret@example.org/",
    "https://example.org\\@evil.example/",
    "https://例え.jp/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_a_url_no_face_stores(faces: Faces, url: str) -> None:
    outcomes = {
        "library": await faces.library(library.save_tutorial(_loose(name="x", url=url))),
        "cli": await faces.cli_json("add", "x", "--url", url),
        "http": await faces.http("POST", "/tutorials", json={"name": "x", "url": url}),
    }
    assert outcomes == dict.fromkeys(outcomes, ("refused", "invalid"))
    summary = await faces.import_ndjson({"name": "x", "url": url})
    assert (summary.inserted, summary.rejected) == (0, 1)
    assert await faces.rows() == []


def _loose(**fields: Any) -> Any:
    """A tutorial as a library caller might build it: attributes, not yet validated."""
    from tutorials import Tutorial

    return Tutorial(**fields)


async def test_one_url_identity_on_every_face(faces: Faces) -> None:
    first = await faces.http(
        "POST", "/tutorials", json={"name": "a", "url": "HTTPS://EXAMPLE.ORG/Case"}
    )
    assert _stored(first) == ("ok", ("a", "https://example.org/Case", None, [], 1))
    same = "https://example.org:443/Case"
    outcomes = {
        "library": await faces.library(library.save_tutorial(_loose(name="b", url=same))),
        "cli": await faces.cli_json("add", "b", "--url", same),
        "http": await faces.http("POST", "/tutorials", json={"name": "b", "url": same}),
    }
    assert outcomes == {
        "library": ("refused", "conflict"),
        "cli": ("refused", "conflict or stale"),  # exit 4
        "http": ("refused", "conflict"),
    }
    summary = await faces.import_ndjson({"name": "a", "url": same})
    assert (summary.inserted, summary.unchanged) == (0, 1)
    assert len(await faces.rows()) == 1


# --- Unicode: one spelling of a name, found by either spelling --------------------------------


async def test_names_in_either_normal_form_are_one_tutorial(faces: Faces) -> None:
    composed, decomposed = "caf\u00e9 guide", "cafe\u0301 guide"
    created = {
        "library": _stored(
            await faces.library(library.save_tutorial(TutorialCreate(name=decomposed)))
        ),
        "cli": _stored(await faces.cli_json("add", decomposed)),
        "http": _stored(await faces.http("POST", "/tutorials", json={"name": decomposed})),
    }
    assert created == dict.fromkeys(created, ("ok", (composed, None, None, [], 1)))
    for query in (composed, decomposed):
        found = {
            "library": len((await library.search_tutorials(query)).items),
            "cli": len((await faces.cli_json("search", query))[1]["items"]),
            "http": len((await faces.http("GET", "/tutorials", params={"q": query}))[1]["items"]),
        }
        assert found == dict.fromkeys(found, 3), query


# --- Updates: an empty patch changes nothing, on every face --------------------------------------


async def test_an_empty_update_writes_nothing_and_checks_the_version(faces: Faces) -> None:
    created = await faces.http("POST", "/tutorials", json={"name": "keep"})
    tutorial_id = created[1]["tutorial_id"]
    unchanged = ("ok", ("keep", None, None, [], 1))
    outcomes = {
        "library": _stored(
            await faces.library(
                library.update_tutorial(tutorial_id, TutorialPatch(), expected_version=1)
            )
        ),
        "cli": _stored(await faces.cli_json("update", str(tutorial_id), "--if-version", "1")),
        "http": _stored(
            await faces.http(
                "PATCH",
                f"/tutorials/{tutorial_id}",
                json={},
                headers={"If-Match": '"1"', "Content-Type": "application/merge-patch+json"},
            )
        ),
    }
    assert outcomes == dict.fromkeys(outcomes, unchanged)
    stale = {
        "library": await faces.library(
            library.update_tutorial(tutorial_id, TutorialPatch(), expected_version=2)
        ),
        "cli": await faces.cli_json("update", str(tutorial_id), "--if-version", "2"),
        "http": await faces.http(
            "PATCH",
            f"/tutorials/{tutorial_id}",
            json={},
            headers={"If-Match": '"2"', "Content-Type": "application/merge-patch+json"},
        ),
    }
    assert stale == {
        "library": ("refused", "stale"),
        "cli": ("refused", "conflict or stale"),  # exit 4: conflict or stale version
        "http": ("refused", "stale"),
    }
    assert [row["version"] for row in await faces.rows()] == [1]


# --- Reads: the same bound, the same filters -----------------------------------------------------


async def test_search_is_bounded_the_same_way_on_every_face(faces: Faces) -> None:
    await import_rows(faces.database, [{"name": f"bounded {n}"} for n in range(8)])
    found = {
        "library": [t.tutorial_id for t in (await library.search_tutorials("bounded")).items],
        "cli": [t["tutorial_id"] for t in (await faces.cli_json("search", "bounded"))[1]["items"]],
        "http": [
            t["tutorial_id"]
            for t in (await faces.http("GET", "/tutorials", params={"q": "bounded"}))[1]["items"]
        ],
    }
    assert len(found["library"]) == 3  # search_candidates: 3 of the 8 matches are ranked
    assert found["cli"] == found["library"] and found["http"] == found["library"]


async def test_an_empty_tag_filter_is_ignored_on_every_face(faces: Faces) -> None:
    await import_rows(faces.database, [{"name": "one", "tags": ["x"]}, {"name": "two"}])
    everything = [1, 2]
    listed = {
        "library": [t.tutorial_id for t in (await library.list_tutorials(tags=[""])).items],
        "cli": [t["tutorial_id"] for t in (await faces.cli_json("list", "--tag", ""))[1]["items"]],
        "http": [
            t["tutorial_id"]
            for t in (await faces.http("GET", "/tutorials", params={"tag": ""}))[1]["items"]
        ],
    }
    assert listed == dict.fromkeys(listed, everything)
    exported = await faces.client.get("/tutorials/export", params={"tag": "", "format": "ndjson"})
    assert exported.status_code == 200
    assert len(exported.content.splitlines()) == 2
    out = io.BytesIO()
    assert await export_rows(faces.database, out, format="ndjson", tags=[""]) == 2
    code, _out, err = await faces.cli("export", "-", "--tag", "", "--format", "ndjson")
    assert code == 0, err


async def test_a_query_the_parser_refuses_is_invalid_input_naming_q(faces: Faces) -> None:
    refused = "-" * 40 + "word"
    outcomes = {
        "library": await faces.library(library.search_tutorials(refused)),
        "cli": await faces.cli_json("search", "--", refused),
        "http": await faces.http("GET", "/tutorials", params={"q": refused}),
        "export": await faces.http("GET", "/tutorials/export", params={"q": refused}),
    }
    assert outcomes == dict.fromkeys(outcomes, ("refused", "invalid"))
    problem = (await faces.client.get("/tutorials", params={"q": refused})).json()
    assert [error["loc"] for error in problem["errors"]] == [["query", "q"]]


# --- Tags of any script -------------------------------------------------------------------------


async def test_tags_of_any_script_are_stored_alike(faces: Faces) -> None:
    tags = ["Python 3", "עברית", "हिन्दी", "ภาษาไทย", "🐍"]
    stored = ["python 3", "עברית", "हिन्दी", "ภาษาไทย", "🐍"]
    args = [arg for tag in tags for arg in ("--tag", tag)]
    outcomes = {
        "library": _stored(
            await faces.library(library.save_tutorial(TutorialCreate(name="a", tags=tags)))
        ),
        "cli": _stored(await faces.cli_json("add", "a", *args)),
        "http": _stored(await faces.http("POST", "/tutorials", json={"name": "a", "tags": tags})),
    }
    assert outcomes == dict.fromkeys(outcomes, ("ok", ("a", None, None, stored, 1)))
    summary = await faces.import_ndjson({"name": "a", "tags": tags})
    assert summary.duplicates + summary.unchanged == 1  # the same url-less row as stored
    by_tag = await faces.http("GET", "/tutorials", params={"tag": "python 3"})
    assert len(by_tag[1]["items"]) == 3


# --- Bulk delete: one filter, one count, on every face ----------------------------------------


async def _seed_for_bulk_delete(faces: Faces) -> None:
    await faces.clear()
    for name, tags in (("a draft", ["draft"]), ("b draft", ["Draft", "x"]), ("kept", ["x"])):
        await faces.library(library.save_tutorial(_loose(name=name, tags=tags)))


async def test_bulk_delete_counts_and_deletes_alike_on_every_face(faces: Faces) -> None:
    dry = {
        "library": await faces.library(library.delete_tutorials(tags=["DRAFT"], dry_run=True)),
        "cli": await faces.cli("delete", "--tag", "DRAFT", "--dry-run"),
        "http": await faces.http("DELETE", "/tutorials?tag=DRAFT&dry_run=true"),
    }
    assert dry == {
        "library": ("ok", 0),
        "cli": (0, "would delete 0 tutorials\n", ""),
        "http": (
            "ok",
            {"matched": 0, "deleted": 0},
        ),
    }
    deleted: dict[str, Any] = {}
    for face in ("library", "cli", "http"):
        await _seed_for_bulk_delete(faces)
        if face == "library":
            deleted[face] = await faces.library(library.delete_tutorials(tags=["DRAFT"]))
        elif face == "cli":
            deleted[face] = await faces.cli("delete", "--tag", "DRAFT")
        else:
            deleted[face] = await faces.http("DELETE", "/tutorials?tag=DRAFT")
        assert [row["name"] for row in await faces.rows()] == ["kept"], face
    assert deleted == {
        "library": ("ok", 2),
        "cli": (0, "deleted 2 tutorials\n", ""),
        "http": ("ok", {"matched": 2, "deleted": 2}),
    }


async def test_bulk_delete_without_a_filter_is_refused_on_every_face(faces: Faces) -> None:
    await _seed_for_bulk_delete(faces)
    code, out, err = await faces.cli("delete")
    assert out == ""
    outcomes = {
        "library": await faces.library(library.delete_tutorials()),
        "cli": ("refused", _EXIT_KINDS.get(code, code)),
        "http": await faces.http("DELETE", "/tutorials"),
    }
    assert outcomes == dict.fromkeys(outcomes, ("refused", "invalid"))
    assert err == (
        "error: invalid input: give a filter (tags, a query), or ask for every tutorial\n"
    )
    assert len(await faces.rows()) == 3
    everything = {
        "http": await faces.http("DELETE", "/tutorials?all=true&dry_run=true"),
        "cli": await faces.cli("delete", "--all", "--dry-run"),
    }
    assert everything == {
        "http": ("ok", {"matched": 3, "deleted": 0}),
        "cli": (0, "would delete 3 tutorials\n", ""),
    }
