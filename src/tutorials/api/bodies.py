"""Request bodies on the wire: declared as pydantic models, read as strict JSON.

A route declares its body as a model (`data: TutorialCreate`); FastAPI reads it, validates it,
reports every invalid field with its place (`["body", "name"]`), and documents it, from that
one declaration. The models are the domain's (`tutorials.schemas`): their fields publish the
patterns they enforce, so a client (or schemathesis) can trust the document both ways.

What FastAPI leaves to the application is *how JSON is read*. Python's `json` module takes
duplicate keys (the last wins, silently), `NaN` and `Infinity`, a byte-order mark, and nests
until it overflows the stack. `StrictJsonMiddleware`, a pure-ASGI middleware in front of the
router, reads the body of a request that will run one of the JSON body routes and parses it
with `parse_json`, which refuses all of those: a 400 for what is not JSON, a 422 naming the
body for duplicate keys or an object of more than `MAX_OBJECT_KEYS` keys (refused as soon as
it is parsed, before validation would list every unknown key). A sound body is handed on
unchanged, and everything else about the route (reading the body into its model, parameters,
dependencies, exception handling) is FastAPI's own.

`json_body(...)` is the dependency each body route declares for what the document promises
about media types: 415 (with `Accept-Post` / `Accept-Patch`) unless the body is declared as one
of the accepted types in UTF-8, and 400 for an empty body. FastAPI solves it before it
validates the body, so a text body gets a 415, not a list of missing fields.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request
from pydantic import ConfigDict, field_validator
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tutorials import schemas
from tutorials.api.middleware import BODY_METHODS
from tutorials.api.problems import InvalidRequest, problem_response
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
    """The body as strict JSON: 400 (`HTTPException`) when it is not JSON at all, 422
    (`InvalidRequest`) for duplicate keys or too many of them."""
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


def _reads_as_json(request: Request) -> bool:
    """Whether FastAPI will read this body as JSON: a Content-Type of `application/json` or
    `application/*+json`. Other types are left to the route's `json_body` dependency (415)."""
    kind, _, subtype = _declared_type(request)[0].partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class StrictJsonMiddleware:
    """Refuse unsound JSON bodies (`parse_json`) of requests to `routes`, before FastAPI reads
    them; hand sound ones on unchanged.

    `routes` are the routes that read a JSON body into a model (`JSON_BODY_ROUTES` of
    `tutorials.api.routes`). A request is checked when one of them matches it fully (Starlette's
    public `BaseRoute.matches`, path and method), so an unknown path is still a 404 and a wrong
    method a 405, and when it declares a JSON body that is not empty (an empty one, or another
    media type, gets the route's own 400 / 415). Bodies are bounded before they get here
    (`BodyLimitMiddleware` sits outside this one and answers 413 / 408 for what it refuses
    while this one reads).
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        target = self._target(scope) if _reads_as_json(request) else None
        if target is None:
            await self.app(scope, receive, send)
            return
        body = await request.body()  # `ClientDisconnect` if the client leaves first
        try:
            if body:
                parse_json(body)
        except HTTPException as refusal:
            # Labelled with its route, as the router would have: the access log and metrics
            # count it under `POST /tutorials`, not as a request that matched nothing.
            scope.update(target)
            errors = refusal.errors if isinstance(refusal, InvalidRequest) else None
            response = problem_response(scope, refusal.status_code, refusal.detail, errors=errors)
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _target(self, scope: Scope) -> Scope | None:
        """The scope the router will give the JSON body route this request runs, if any."""
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return child_scope
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body already read, then whatever the client sends next
    (a streaming response waits on it for the disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


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
