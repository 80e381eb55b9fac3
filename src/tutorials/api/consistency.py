"""Read-your-writes over HTTP, with read replicas: two headers, on every route.

- A response to a request that wrote (POST, PATCH, DELETE, an import) carries
  `X-Commit-LSN: 0/16B3748`, where its last write committed in the primary's WAL.
- A request carrying `X-Read-After-LSN: 0/16B3748` (the value a write answered, from this
  client or any other) reads at least that: on a replica that has replayed it, else on the
  primary. A value that is not an LSN is a 422 naming the header.

Each request gets a fresh position (`tutorials.db.consistency.begin`), which the units of work
it runs read and update. The middleware is installed only when the app's database has
replicas: without them there is nothing to route, and the headers are ignored at no cost.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tutorials.api.problems import problem_response
from tutorials.db import consistency
from tutorials.errors import FieldError, InvalidInput

READ_AFTER = "X-Read-After-LSN"
COMMIT = "X-Commit-LSN"
_READ_AFTER = READ_AFTER.lower().encode("latin-1")
_COMMIT = COMMIT.lower().encode("latin-1")


class ConsistencyMiddleware:
    """Apply `X-Read-After-LSN` to the request's reads; answer `X-Commit-LSN` after writes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read_after = None
        for name, value in scope["headers"]:
            if name == _READ_AFTER:
                try:
                    lsn = consistency.parse_lsn(value.decode("latin-1"), field=READ_AFTER)
                except InvalidInput:
                    rule = consistency.LSN_RULE
                    response = problem_response(
                        scope,
                        422,
                        f"invalid input: header.{READ_AFTER}: {rule}",
                        errors=[FieldError(("header", READ_AFTER), rule)],
                    )
                    await response(scope, receive, send)
                    return
                read_after = lsn if read_after is None else max(read_after, lsn)
        position = consistency.begin(read_after)

        async def send_with_position(message: Message) -> None:
            if message["type"] == "http.response.start" and position.committed is not None:
                lsn = consistency.format_lsn(position.committed).encode("latin-1")
                message = {**message, "headers": [*message.get("headers", ()), (_COMMIT, lsn)]}
            await send(message)

        await self.app(scope, receive, send_with_position)
