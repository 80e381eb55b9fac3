"""Schemathesis over /openapi.json: the implementation checked against its own document.

Every operation gets a bounded, derandomised set of generated requests (valid and invalid),
sent in-process to the app running on a real database, with every default check: no 5xx,
statuses / content types / headers / bodies as documented, invalid data refused, valid data
accepted, auth not ignored, deleted resources gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from sqlalchemy.engine import URL

from tutorials.api import create_app
from tutorials.settings import Settings

pytestmark = pytest.mark.slow  # over 10 s: scheduled first (tests/conftest.py)

TOKEN = "schemathesis-token"

#: The checks' settings, shared with the CLI (see the file for the one tuning and why).
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture
def api_schema(
    database_url: URL, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[schemathesis.schemas.BaseSchema]:
    app_settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url.render_as_string(hide_password=False),
        auto_migrate=False,
        api_tokens=TOKEN,
        pgbouncer=settings.pgbouncer,  # TEST_PGBOUNCER=1 runs it through PgBouncer
    )
    app = create_app(app_settings)
    monkeypatch.setenv("SCHEMATHESIS_TOKEN", TOKEN)  # read by the config's bearerAuth
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_path(CONFIG)
    )
    yield schema
    asgi.shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_the_promises_of_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate()
