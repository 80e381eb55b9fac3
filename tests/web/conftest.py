"""The web page is served by the API app: reuse its fixtures."""

from tests.api.conftest import app, client, make_client

__all__ = ["app", "client", "make_client"]
