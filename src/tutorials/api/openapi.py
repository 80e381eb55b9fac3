"""The OpenAPI document: complete and true, so a tool can check the implementation against it.

FastAPI writes it from the routes' declarations (parameters, bodies, response models). What
it cannot derive is finished here, and only that: routes declare the statuses they answer with
`problems(404, 422)` and `with_etag(...)`; `build` then makes every error response
`application/problem+json` with the `Problem` schema (FastAPI would say `application/json` and
its own 422 shape), gives 503s their `Retry-After`, lifts `allowEmptyValue` from a parameter's
schema onto the parameter (`params.Limit`), and — only when tokens are configured — has every
write declare the bearer scheme and its 401, as `security.WriteGuardMiddleware` enforces (a
route declared open keeps its `security: []`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from tutorials.api.problems import PROBLEM_MEDIA_TYPE, Problem
from tutorials.api.security import BEARER_SCHEME

WRITE_METHODS = frozenset({"post", "patch", "put", "delete"})

_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON (or not UTF-8), or a header is malformed.",
    401: "A write without a valid bearer token.",
    404: "No such tutorial.",
    409: "Conflicts with another tutorial: its url is already taken.",
    412: "If-Match names a version the tutorial is no longer at.",
    413: "The request body is over the configured limit.",
    415: "The body's Content-Type is not one this operation accepts.",
    422: "Invalid input: every invalid field is named in `errors`.",
    503: "The database is unreachable, too slow, or the pool is exhausted: retry later.",
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_ETAG = {
    "description": 'The entity tag of the tutorial\'s version, e.g. `"3"`.',
    "required": True,
    "schema": {"type": "string"},
}
_LOCATION = {
    "description": "Where the new tutorial lives.",
    "required": True,
    "schema": {"type": "string"},
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Declare error statuses; `build` gives each the problem+json content."""
    return {status: {"description": _DESCRIPTIONS[status]} for status in statuses}


def with_etag(description: str, *, location: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"ETag": _ETAG}
    if location:
        headers["Location"] = _LOCATION
    return {"description": description, "headers": headers}


def _add_model(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    document = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(document.pop("$defs", {}))
    schemas[str(document.get("title", model.__name__))] = document


def _lift_allow_empty(operation: dict[str, Any]) -> None:
    """`allowEmptyValue` belongs to the parameter, but a declaration can only reach its schema."""
    for parameter in operation.get("parameters", []):
        if parameter.get("schema", {}).pop("allowEmptyValue", False):
            parameter["allowEmptyValue"] = True


def build(app: FastAPI, *, secured: bool) -> dict[str, Any]:
    """Generate the document for `app` and make every promise in it exact."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _add_model(schemas, Problem)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            _lift_allow_empty(operation)
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if secured and method in WRITE_METHODS and "security" not in operation:
                operation["security"] = [{BEARER_SCHEME: []}]
                responses["401"] = {
                    "description": _DESCRIPTIONS[401],
                    "headers": {
                        "WWW-Authenticate": {
                            "description": "The Bearer challenge.",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    },
                }
            for status, response in responses.items():
                code = int(status)
                if code >= 400:
                    response["content"] = problem
                    response.setdefault("description", _DESCRIPTIONS.get(code, "Error."))
                    if code == 422:
                        response["description"] = _DESCRIPTIONS[422]
                    if code == 503:
                        response.setdefault("headers", {})["Retry-After"] = _RETRY_AFTER
                elif code in (204, 304):
                    response.pop("content", None)
    if secured:
        components["securitySchemes"] = {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the tokens in TUTORIALS_API_TOKENS (writes only).",
            }
        }
    return document
