"""Pure ASGI middlewares: request context (id, access log, metrics, last-resort 500) and the
request body limit.

Pure ASGI rather than Starlette's `BaseHTTPMiddleware`: no extra task or stream per request,
and exceptions stay exceptions (`BaseHTTPMiddleware` costs measurably on every request and
wraps errors in task groups).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tutorials.api.logs import REQUEST_ID
from tutorials.api.metrics import UNMATCHED_ROUTE, HttpMetrics
from tutorials.api.problems import REQUEST_ID_SCOPE_KEY, problem_response

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


class RequestContextMiddleware:
    """Give each request an id, answer unhandled errors with a bare 500, log and count it.

    The id is the client's `X-Request-ID` when it is plain and short, else a fresh one; it is
    echoed in the response header, stamped on every log line written meanwhile, and put in
    problem bodies. This is the outermost of our layers, so its log line and metrics see the
    final status, including errors turned into responses by inner handlers.
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
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client left while we read its body: nobody to answer, nothing went wrong.
            access_logger.debug("client disconnected during %s %s", scope["method"], scope["path"])
        except Exception:
            error_logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
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
            self.metrics.observe(scope["method"], template, status, seconds)
            if access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_logger.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "request_id": request_id,
                    },
                )
            REQUEST_ID.reset(token)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body grows past the limit; handled as a 413 problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


#: Methods whose bodies we read; a declared Content-Length over the limit is refused up front.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, whether announced or chunked.

    A `Content-Length` over the limit is answered before reading a byte. A chunked body is
    counted as it is received: the chunk that crosses the limit raises `BodyTooLarge` inside
    whoever is reading, so nothing past the limit is ever buffered.
    """

    def __init__(
        self, app: ASGIApp, limit: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        #: Paths with a limit of their own: streaming imports bound their memory themselves,
        #: so they take far larger bodies, but still not unbounded ones.
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
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

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as error:
            if response_started:
                raise
            await problem_response(scope, 413, error.detail)(scope, receive, send)
