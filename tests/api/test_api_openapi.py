"""The OpenAPI document itself: complete (every route, every error as problem+json, every 503
with Retry-After), exact request schemas, and nothing internal (the web page) in it."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

OPERATIONS = {
    ("/tutorials", "get"),
    ("/tutorials", "post"),
    ("/tutorials", "delete"),
    ("/tutorials/import", "post"),
    ("/tutorials/export", "get"),
    ("/tutorials/{tutorial_id}", "get"),
    ("/tutorials/{tutorial_id}", "patch"),
    ("/tutorials/{tutorial_id}", "delete"),
    ("/tutorials/count", "get"),
    ("/tags", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
}


async def test_openapi_json_and_docs_are_served(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_every_route_is_documented_and_nothing_else(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    found = {(path, method) for path, item in paths.items() for method in item}
    assert found == OPERATIONS


def test_every_error_is_declared_as_problem_json(app: FastAPI) -> None:
    document = app.openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (path, method, status)
                    schema = content["application/problem+json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}
                if status == "503":
                    assert response["headers"]["Retry-After"]["required"] is True


def test_the_declared_statuses_match_the_issue(app: FastAPI) -> None:
    paths = app.openapi()["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert statuses("/tutorials", "post") == {"201", "400", "409", "413", "415", "422", "503"}
    assert statuses("/tutorials", "get") == {"200", "422", "503"}  # a bad cursor is a 422
    assert statuses("/tutorials/{tutorial_id}", "get") == {"200", "304", "404", "422", "503"}
    assert statuses("/tutorials/{tutorial_id}", "patch") == {
        "200",
        "400",
        "404",
        "409",
        "412",
        "413",
        "415",
        "422",
        "503",
    }
    assert statuses("/tutorials/{tutorial_id}", "delete") == {
        "204",
        "400",
        "404",
        "412",
        "422",
        "503",
    }
    assert statuses("/readyz", "get") == {"200", "503"}
    created = paths["/tutorials"]["post"]["responses"]["201"]
    assert set(created["headers"]) == {"ETag", "Location"}


def test_request_bodies_publish_the_exact_wire_schemas(app: FastAPI) -> None:
    document = app.openapi()
    schemas = document["components"]["schemas"]
    create = schemas["TutorialCreate"]
    assert create["required"] == ["name"]
    assert create["additionalProperties"] is False
    assert "pattern" in create["properties"]["name"]
    patch = schemas["TutorialPatch"]
    assert patch["properties"]["name"]["type"] == "string"  # present, but never null
    assert "anyOf" not in patch["properties"]["name"]
    operation = document["paths"]["/tutorials/{tutorial_id}"]["patch"]
    assert set(operation["requestBody"]["content"]) == {
        "application/json",
        "application/merge-patch+json",
    }
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"If-Match"}


def test_parameters_publish_what_they_enforce(app: FastAPI) -> None:
    """The declarations write the document: bounds, patterns and choices, once."""
    paths = app.openapi()["paths"]

    def parameter(path: str, method: str, name: str) -> dict[str, object]:
        found = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        assert len(found) == 1, (path, method, name)
        return dict(found[0])

    limit = parameter("/tutorials", "get", "limit")
    assert limit["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,  # more is a 422, and the document says so
        "default": 20,
        "title": "Limit",
        "description": limit["description"],
    }
    assert limit["allowEmptyValue"] is True  # `?limit=` is the default page size
    cursor = parameter("/tutorials", "get", "cursor")
    assert cursor["schema"]["anyOf"][0] == {  # type: ignore[index]
        "type": "string",
        "maxLength": 512,
        "pattern": "^[A-Za-z0-9_-]*$",
    }
    item = parameter("/tutorials/{tutorial_id}", "get", "tutorial_id")
    assert (item["in"], item["required"]) == ("path", True)
    assert item["schema"]["minimum"] == 1  # type: ignore[index]
    assert item["schema"]["maximum"] == 2**63 - 1  # type: ignore[index]
    for path, method in (("/tutorials", "get"), ("/tutorials", "delete")):
        tag = parameter(path, method, "tag")
        assert tag["schema"]["maxItems"] == 50  # type: ignore[index]
        assert tag["schema"]["items"]["pattern"].startswith("^(?:")  # type: ignore[index]
    assert parameter("/tutorials", "delete", "all")["schema"]["type"] == "boolean"  # type: ignore[index]
    assert parameter("/tutorials/export", "get", "format")["schema"]["enum"] == [  # type: ignore[index]
        "csv",
        "ndjson",
        "json",
        "backup",
    ]
