"""Pure ASGI middlewares: HEAD answered as GET without its body, request context (id, default
response headers, access log, metrics, last-resort 500), allowed hosts, bounds on the request
head (header count and size, query parameters), and the request body's limits (size and pace).

Pure ASGI rather than Starlette's `BaseHTTPMiddleware`: no extra task or stream per request,
and exceptions stay exceptions (`BaseHTTPMiddleware` costs measurably on every request and
wraps errors in task groups).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence

from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tutorials.api.logs import REQUEST_ID
from tutorials.api.metrics import UNMATCHED_ROUTE, HttpMetrics
from tutorials.api.problems import (
    HEAD_SCOPE_KEY,
    REQUEST_ID_SCOPE_KEY,
    method_sent,
    problem_response,
)
from tutorials.errors import FieldError

access_logger = logging.getLogger("tutorials.access")
error_logger = logging.getLogger("tutorials.api")

#: A client's X-Request-ID is reused only if it is short and plain (it ends up in logs).
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
#: Status logged when the client went away before any response started (nginx's convention).
CLIENT_CLOSED = 499


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_REQUEST_ID.fullmatch(text) else None
    return None


class HeadMiddleware:
    """Answer HEAD as GET, without the body (RFC 9110 §9.3.2), on every route.

    FastAPI's routes take the methods they declare and no others, so a HEAD on a GET route would
    be a 405. Here a HEAD goes through the app as a GET (same routing, handlers, conditional
    requests and headers, `Content-Length` included) and only the body is dropped on the way
    out. The app sees a copy of the scope (the server's own still says HEAD, so it frames the
    response as one), marked with `HEAD_SCOPE_KEY` so the access log and a 405 name the method
    the client sent. A streamed body (an export) is still produced and dropped, as a GET would
    cost: HEAD is bounded by the same limits.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_SCOPE_KEY: True}, receive, send_without_body)


#: Stamped on every response that lacks it: a JSON answer is data, never to be sniffed as
#: HTML (RFC 9110 has no say; browsers do), nor stored by a cache it did not ask for.
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")
_JSON_TYPES = (b"application/json", b"application/problem+json")


def _with_defaults(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`X-Content-Type-Options: nosniff` on every response, and on JSON answers without a
    `Cache-Control` of their own, `no-store`: lists, problems and write results change with
    any write and carry no validator, so a cached copy could only be stale. (A tutorial sets
    `no-cache` itself: it has a strong ETag, so a cache may keep it and revalidate for a 304.)
    """
    sniff = cache = False
    json = False
    for name, value in headers:
        if name == b"x-content-type-options":
            sniff = True
        elif name == b"cache-control":
            cache = True
        elif name == b"content-type":
            json = value.split(b";", 1)[0].strip().lower() in _JSON_TYPES
    if sniff and (cache or not json):
        return headers
    added = list(headers)
    if not sniff:
        added.append(_NOSNIFF)
    if json and not cache:
        added.append(_NO_STORE)
    return added


class RequestContextMiddleware:
    """Give each request an id, answer unhandled errors with a bare 500, log and count it.

    The id is the client's `X-Request-ID` when it is plain and short, else a fresh one; it is
    echoed in the response header, stamped on every log line written meanwhile, and put in
    problem bodies. Every response gets the default headers of `_with_defaults` here, on its
    way out. This is the outermost of our layers but HEAD's, so its log line and metrics see
    the final status, including errors turned into responses by inner handlers.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        request_id = _client_request_id(scope) or uuid.uuid4().hex
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        token = REQUEST_ID.set(request_id)
        id_header = (b"x-request-id", request_id.encode("latin-1"))
        status = CLIENT_CLOSED
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*_with_defaults(list(message.get("headers", ()))), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client left while we read its body: nobody to answer, nothing went wrong.
            access_logger.debug(
                "client disconnected during %s %s", method_sent(scope), scope["path"]
            )
        except Exception:
            error_logger.exception("unhandled error in %s %s", method_sent(scope), scope["path"])
            if response_started:
                raise  # too late for a clean answer: let the server abort the connection
            response = problem_response(
                scope,
                500,
                f"an unexpected error occurred; it has been logged as request {request_id}",
            )
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started_at
            route = scope.get("route")
            template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
            method = method_sent(scope)
            self.metrics.observe(method, template, status, seconds)
            write_access_line(scope, method, template, status, seconds, request_id)
            REQUEST_ID.reset(token)


def write_access_line(
    scope: Scope,
    method: str,
    route: str | None,
    status: int,
    seconds: float,
    request_id: str | None = None,
) -> None:
    """The access log's line for one answered request (`logs.ACCESS_FIELDS`), if INFO is on."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    access_logger.info(
        "%s %s %s",
        method,
        scope["path"],
        status,
        extra={
            "method": method,
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": f"{client[0]}:{client[1]}" if client else None,
            "request_id": request_id,
        },
    )


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body grows past the limit; handled as a 413 problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised from `receive` when the body stops arriving; handled as a 408 problem that closes
    the connection (what is left of the body will never be read)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body stopped arriving: nothing came for {seconds:g} s",
            headers={"Connection": "close"},
        )


#: Methods whose bodies we read; a declared Content-Length over the limit is refused up front.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, whether announced or chunked, and
    bodies that stop arriving for `timeout` seconds with 408.

    A `Content-Length` over the limit is answered before reading a byte. A chunked body is
    counted as it is received: the chunk that crosses the limit raises `BodyTooLarge` inside
    whoever is reading, so nothing past the limit is ever buffered. Each wait for the next
    part of the body is bounded by `timeout` (`BodyTimeout`); once the body is complete,
    `receive` is left alone (a streamed response waits on it for the client's disconnect).
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        path_limits: Mapping[str, int] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        #: Paths with a limit of their own: streaming imports bound their memory themselves,
        #: so they take far larger bodies, but still not unbounded ones.
        self.path_limits = dict(path_limits or {})
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            # Other methods' bodies are never read, so there is nothing to guard.
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.limit)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                error = BodyTooLarge(limit)
                await problem_response(scope, 413, error.detail)(scope, receive, send)
                return
        received = 0
        complete = False
        timeout = self.timeout

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete or timeout is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(timeout):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as error:
            if response_started:
                raise
            headers = dict(error.headers or {})
            await problem_response(scope, error.status_code, error.detail, headers=headers)(
                scope, receive, send
            )


class HeadLimitsMiddleware:
    """Bound what the request head may hold before the app reads any of it.

    More than `max_headers` header fields, or header fields of more than `max_header_bytes`
    together, is a 431; more than `max_query_params` query parameters, a 422 naming `query`.
    Each is counted in one pass over bytes the server already holds, and answered with a small
    problem document: the cost of a refusal does not grow with what was sent. (With the `h11`
    parser, uvicorn refuses a head over `max_header_bytes` even before this, while reading it.)
    """

    def __init__(
        self, app: ASGIApp, max_headers: int, max_header_bytes: int, max_query_params: int
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.max_query_params = max_query_params

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            detail = f"the request has {len(headers)} header fields; at most {self.max_headers}"
            await problem_response(scope, 431, detail)(scope, receive, send)
            return
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 4  # "name: value\r\n"
        if size > self.max_header_bytes:
            detail = (
                f"the request's header fields hold {size} bytes; at most {self.max_header_bytes}"
            )
            await problem_response(scope, 431, detail)(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        if query and query.count(b"&") >= self.max_query_params:
            message = f"at most {self.max_query_params} query parameters"
            response = problem_response(
                scope,
                422,
                f"invalid input: query: {message}",
                errors=[FieldError(("query",), message)],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: The names a loopback-bound service answers to unless `allowed_hosts` says otherwise.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Set in the scope by the app `AllowedHostsMiddleware` lets through.
_HOST_ALLOWED = "tutorials.host_allowed"


class AllowedHostsMiddleware:
    """Answer only to the allowed host names (any port): a request naming another, or none,
    gets a 400 problem.

    The check itself is Starlette's `TrustedHostMiddleware` (its parsing of `Host`, IPv6
    literals included, and its `*.example.com` patterns); its refusal is plain text, so the
    app it guards marks the scope as it is reached, and a response that starts without that
    mark is Starlette's refusal, sent as problem+json instead. This is what stops DNS
    rebinding: a page from `rebind.evil.example` that resolves to 127.0.0.1 still sends
    `Host: rebind.evil.example`.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)
        self.check = TrustedHostMiddleware(
            self._reached, allowed_hosts=self.allowed_hosts, www_redirect=False
        )

    async def _reached(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_HOST_ALLOWED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.check(scope, receive, send)
            return

        async def refusal_as_problem(message: Message) -> None:
            if scope.get(_HOST_ALLOWED):
                await send(message)
            elif message["type"] == "http.response.start":
                host = _host_of(scope)
                detail = (
                    f"this service does not answer to the host {host!r}"
                    if host
                    else "the request names no host"
                )
                await problem_response(scope, 400, detail)(scope, receive, send)
            # Starlette's plain-text body is dropped: the problem above was sent whole

        await self.check(scope, receive, refusal_as_problem)


def _host_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return bytes(value).decode("latin-1")[:200]
    return ""
