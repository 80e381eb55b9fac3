"""RFC 9457 problem details: the one shape of every error the API answers.

Every error leaves as `application/problem+json` with `type`, `title`, `status`, `detail` and
`instance`, plus the request id (so a user can quote it and we can find the log line) and, for
422, an `errors` list naming each invalid field: the first `MAX_FIELD_ERRORS` of them, with
`errors_omitted` counting the rest, so that a body with 90,000 mistakes gets a small answer.
Details come from our own messages, never from exception text we did not write: no stack
trace, SQL or connection string reaches a client.

Handlers here, registered with FastAPI's own `add_exception_handler`, cover domain errors
(`tutorials.errors`), Starlette's `HTTPException` (which is also how unknown routes (404) and
wrong methods (405) arrive), `InvalidRequest` (a 422 naming fields, raised where only an
`HTTPException` gets through, such as while FastAPI reads a body), and FastAPI's request
validation errors. The last-resort 500 lives in `middleware.RequestContextMiddleware`, which
sees every exception nobody handled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from tutorials.errors import (
    Conflict,
    FieldError,
    InvalidInput,
    NotFound,
    StaleVersion,
    TutorialsError,
    Unavailable,
)
from tutorials.schemas import MAX_FIELD_ERRORS

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUEST_ID_SCOPE_KEY = "tutorials.request_id"
#: Set in the scope of a HEAD request, which is routed as a GET (`middleware.HeadMiddleware`).
HEAD_SCOPE_KEY = "tutorials.head"

logger = logging.getLogger("tutorials.api")


class FieldProblem(BaseModel):
    """One invalid input: where (`["body", "name"]`, `["query", "limit"]`) and what is wrong."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(default="about:blank", description="A URI reference naming the kind.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong, for a human.")
    instance: str | None = Field(default=None, description="The request path.")
    request_id: str | None = Field(default=None, description="Quote it when reporting a problem.")
    errors: list[FieldProblem] | None = Field(
        default=None,
        description=f"Each invalid field (422 only): the first {MAX_FIELD_ERRORS}.",
    )
    errors_omitted: int | None = Field(
        default=None, description="How many more invalid fields there were, when any."
    )


#: RFC 9110's names where Python's `HTTPStatus` still has the older ones.
_RFC_9110_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _standard_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _phrase(status: int) -> str:
    return _RFC_9110_PHRASES.get(status) or _standard_phrase(status)


def request_id_of(scope: Scope) -> str | None:
    value = scope.get(REQUEST_ID_SCOPE_KEY)
    return value if isinstance(value, str) else None


def instance_of(scope: Scope) -> str:
    """The request path as the client sent it (still percent-encoded), for `instance`."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.decode("latin-1").split("?", 1)[0]
    path = scope.get("path")
    return path if isinstance(path, str) else ""


def problem_response(
    scope: Scope,
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[FieldError] | None = None,
) -> Response:
    """Build the problem+json response for `status`, carrying the request's id and path."""
    body: dict[str, object] = {
        "type": "about:blank",
        "title": _phrase(status),
        "status": status,
        "detail": detail,
        "instance": instance_of(scope),
    }
    request_id = request_id_of(scope)
    if request_id is not None:
        body["request_id"] = request_id
    if errors is not None:
        shown = errors[:MAX_FIELD_ERRORS]
        body["errors"] = [{"loc": list(error.loc), "msg": error.msg} for error in shown]
        if len(errors) > len(shown):
            body["errors_omitted"] = len(errors) - len(shown)
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def unavailable_headers(request: Request) -> dict[str, str]:
    seconds = getattr(request.app.state, "retry_after_seconds", 1)
    return {"Retry-After": str(seconds)}


_DOMAIN_STATUS: tuple[tuple[type[TutorialsError], int], ...] = (
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (StaleVersion, 412),
    (Unavailable, 503),
)


def status_for(error: TutorialsError) -> int:
    for kind, status in _DOMAIN_STATUS:
        if isinstance(error, kind):
            return status
    return 500


async def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TutorialsError)
    status = status_for(exc)
    if status == 500:
        logger.error("unmapped domain error %s", type(exc).__name__, exc_info=exc)
        return problem_response(request.scope, 500, "an unexpected error occurred")
    if isinstance(exc, InvalidInput):
        return problem_response(request.scope, 422, exc.detail, errors=exc.errors)
    if isinstance(exc, Unavailable):
        logger.warning("database unavailable: %s", exc.detail)
        headers = unavailable_headers(request)
        return problem_response(request.scope, 503, exc.detail, headers=headers)
    return problem_response(request.scope, status, exc.detail)


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this path (Starlette only names the first route's),
    and HEAD wherever GET is (`middleware.HeadMiddleware` answers it).

    Asks each route whether it would fully match the same request with another method, so it
    needs nothing from the routes but their public `matches`.
    """
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
            if method == "GET":
                allowed.append("HEAD")
    return allowed


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    defaults = {_phrase(status), _standard_phrase(status)}
    detail = exc.detail if exc.detail and exc.detail not in defaults else ""
    if status == 404 and not detail:
        detail = f"there is nothing at {instance_of(request.scope)}"
    elif status == 405:
        allow = ", ".join(allowed_methods(request))
        headers["Allow"] = allow
        detail = detail or f"{method_sent(request.scope)} is not allowed here; allowed: {allow}"
    elif status == 503:
        headers.setdefault("Retry-After", unavailable_headers(request)["Retry-After"])
    return problem_response(request.scope, status, detail or _phrase(status), headers=headers)


def method_sent(scope: Scope) -> str:
    """The method the client sent: HEAD for a HEAD routed as GET (`middleware.HeadMiddleware`)."""
    return "HEAD" if scope.get(HEAD_SCOPE_KEY) else str(scope["method"])


class InvalidRequest(HTTPException):
    """A 422 naming the invalid fields, for where only an `HTTPException` passes (FastAPI
    reading a body lets those through and turns anything else into a bare 400)."""

    def __init__(self, detail: str, errors: Sequence[FieldError]) -> None:
        super().__init__(422, detail)
        self.errors = list(errors)


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return problem_response(request.scope, 422, exc.detail, errors=exc.errors)


def field_errors(errors: Iterable[Mapping[str, object]]) -> list[FieldError]:
    """Only `loc` and `msg` of each pydantic error: never the input (it may be huge or secret)."""
    found = []
    for error in errors:
        loc = error.get("loc", ())
        parts = (
            tuple(part for part in loc if isinstance(part, str | int))
            if isinstance(loc, tuple | list)
            else ()
        )
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        found.append(FieldError(parts, message))
    return found


@contextmanager
def located_in_query() -> Iterator[None]:
    """The service's errors about query values, located as the API documents them:
    `("query", "tag", 0)` rather than the service's `("tag", 0)`."""
    try:
        yield
    except InvalidInput as exc:
        errors = [FieldError(("query", *error.loc), error.msg) for error in exc.errors]
        raise InvalidInput(exc.detail, errors) from None


def summary(errors: Sequence[FieldError]) -> str:
    """`invalid input: ` and the first `MAX_FIELD_ERRORS` errors, then how many more."""
    parts = [
        f"{'.'.join(str(p) for p in error.loc) or 'request'}: {error.msg}"
        for error in errors[:MAX_FIELD_ERRORS]
    ]
    hidden = len(errors) - MAX_FIELD_ERRORS
    more = f"; and {hidden} more" if hidden > 0 else ""
    return "invalid input: " + "; ".join(parts) + more


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    return problem_response(request.scope, 422, summary(errors), errors=errors)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every handled error into problem+json."""
    app.add_exception_handler(TutorialsError, domain_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(InvalidRequest, invalid_request)
    app.add_exception_handler(RequestValidationError, validation_error)
