"""Request bodies on the wire: declared as pydantic models, read as strict JSON.

A route declares its body as a model (`data: TutorialCreate`); FastAPI reads it, validates it,
reports every invalid field with its place (`["body", "name"]`), and documents it, from that
one declaration. The models are the domain's (`tutorials.schemas`): their fields publish the
patterns they enforce, so a client (or schemathesis) can trust the document both ways.

What FastAPI leaves to the application is *how JSON is read*. Python's `json` module takes
duplicate keys (the last wins, silently), `NaN` and `Infinity`, a byte-order mark, and nests
until it overflows the stack. `JsonBodyRoute` is FastAPI's documented extension for that (a
route class whose handler gets a custom `Request`, "Custom Request and APIRoute class"): its
`StrictJsonRequest.json()` refuses all of those, with a 400 for what is not JSON and a 422
naming the body for duplicate keys or an object of more than `MAX_OBJECT_KEYS` keys (refused as
soon as it is parsed, before validation would list every unknown key). Everything else about
the route (parameters, dependencies, exception handling) is FastAPI's own.

`json_body(...)` is the dependency each body route declares for what the document promises
about media types: 415 (with `Accept-Post` / `Accept-Patch`) unless the body is declared as one
of the accepted types in UTF-8, and 400 for an empty body. FastAPI solves it before it
validates the body, so a text body gets a 415, not a list of missing fields.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import ConfigDict, field_validator
from starlette.exceptions import HTTPException
from starlette.responses import Response

from tutorials import schemas
from tutorials.api.problems import InvalidRequest
from tutorials.errors import FieldError

#: Built when the routes are declared, not on first use as the domain's models are (they defer
#: their build for the command line's sake): FastAPI wraps a body model in a `TypeAdapter` that
#: would otherwise build it, and warn about FastAPI's own field metadata, on the first request.
_BUILT_NOW = ConfigDict(defer_build=False)


class TutorialCreate(schemas.TutorialCreate):
    """A new tutorial. Only `name` is required; `tags` are stored lower-case, without duplicates."""

    model_config = _BUILT_NOW


def _name_not_nullable(schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    name = properties.get("name", {})
    for option in name.pop("anyOf", []):
        if option.get("type") == "string":
            name.update(option)
    name.pop("default", None)


class TutorialPatch(schemas.TutorialPatch):
    """JSON merge patch: absent = unchanged, null = cleared (`name` cannot be cleared)."""

    model_config = ConfigDict(
        extra="forbid",
        title="TutorialPatch",
        json_schema_extra=_name_not_nullable,
        defer_build=False,
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name_cannot_be_cleared(cls, value: object) -> object:
        if value is None:
            raise ValueError("name cannot be null (it is required)")
        return value


JSON_TYPES = frozenset({"application/json"})
MERGE_PATCH_TYPES = frozenset({"application/merge-patch+json", "application/json"})

#: Keys of one JSON object in a body. A tutorial has five fields: an object with more is
#: refused as soon as it is parsed, before validation would list every unknown key.
MAX_OBJECT_KEYS = 64


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _TooManyKeys(ValueError):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:
        raise _TooManyKeys(len(pairs))
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _refused(message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid input: body: {message}", [FieldError(("body",), message)])


def parse_json(raw: bytes) -> object:
    """The body as strict JSON: 400 when it is not JSON at all, 422 (`InvalidRequest`) for
    duplicate keys or too many of them. Both are `HTTPException`s, which FastAPI lets through
    from body reading unchanged."""
    if not raw.strip():
        raise HTTPException(400, "the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            400, f"the request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise _refused(f"duplicate key {exc.key!r} in the JSON object") from None
    except _TooManyKeys as exc:
        raise _refused(f"a JSON object with {exc.count} keys: at most {MAX_OBJECT_KEYS}") from None
    except RecursionError:
        raise HTTPException(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None


class StrictJsonRequest(Request):
    """A `Request` whose `json()` is `parse_json` (parsed once, kept under a name of our own
    rather than Starlette's cache attribute)."""

    _strict_json: Any

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_json(await self.body())
        return self._strict_json


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JsonBodyRoute(APIRoute):
    """An `APIRoute` whose body, if it declares one, is read by `StrictJsonRequest`.

    Overriding `get_route_handler` to hand the handler a `Request` subclass is FastAPI's
    documented extension ("Custom Request and APIRoute class"). What it rests on beyond the
    page: FastAPI reads a JSON body through `Request.json()`. The HTTP checks of
    tests/api/test_api_errors.py (duplicate keys 422, NaN 400, ...) fail if a release stops
    doing so, and CI runs them on the lowest and the locked FastAPI.
    """

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict_json_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_json_handler


def _declared_type(request: Request) -> tuple[str, str]:
    """The request's media type and charset, lower-cased ('' when absent)."""
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media_type.strip().lower(), charset


def require_media_type(request: Request, accepted: frozenset[str], accept_header: str) -> None:
    """415 unless the body is declared as one of `accepted` (UTF-8, the only JSON charset)."""
    media_type, charset = _declared_type(request)
    if media_type not in accepted or charset not in ("", "utf-8", "utf8"):
        raise HTTPException(
            415,
            f"send the body as {' or '.join(sorted(accepted))} (UTF-8), "
            f"not {media_type or 'no Content-Type'}",
            headers={accept_header: ", ".join(sorted(accepted))},
        )


def json_body(accepted: frozenset[str], accept_header: str) -> Callable[[Request], Awaitable[None]]:
    """The dependency a body route declares: the media type (415), then a body at all (400)."""

    async def body_is_json(request: Request) -> None:
        require_media_type(request, accepted, accept_header)
        if not await request.body():  # read once: FastAPI has read it already
            raise HTTPException(400, "the request body is empty: send a JSON object")

    return body_is_json


def media_types_of(schema_name: str, media_types: frozenset[str]) -> dict[str, Any]:
    """`openapi_extra` listing every media type a body route accepts for its model (FastAPI
    documents one, `application/json`)."""
    reference = {"$ref": f"#/components/schemas/{schema_name}"}
    content = {media_type: {"schema": reference} for media_type in sorted(media_types)}
    return {"requestBody": {"content": content}}
