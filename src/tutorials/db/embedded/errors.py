"""The one error the embedded server raises."""

from __future__ import annotations

from tutorials.errors import Unavailable

__all__ = ["EmbeddedPostgresError"]


class EmbeddedPostgresError(Unavailable):
    """The private server could not be set up, started, reached or stopped (one-line message).

    An `Unavailable`: the database cannot serve us right now, so every face reports it the way
    it reports an unreachable server (the command line with one line and exit code 5, HTTP with
    503), and its message says what to do about it.
    """
