"""Settings: URL forms normalised to asyncpg, and a password that never shows."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tutorials.settings import Settings, normalize_database_url


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql+asyncpg://app:s3cret@db.example:5433/catalog",
        "postgresql://app:s3cret@db.example:5433/catalog",
        "postgres://app:s3cret@db.example:5433/catalog",
    ],
)
def test_url_forms_become_asyncpg(raw: str) -> None:
    url = normalize_database_url(raw)
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        "s3cret",
        "db.example",
        5433,
        "catalog",
    )


def test_libpq_multi_host_and_options_reach_asyncpg() -> None:
    url = normalize_database_url(
        "postgresql://app:pw@/catalog?host=a:5432&host=b:5433"
        "&target_session_attrs=read-write&sslmode=require&connect_timeout=3"
    )
    engine = create_async_engine(url)
    _args, kwargs = engine.dialect.create_connect_args(engine.url)
    assert kwargs["host"] == ["a", "b"]
    assert kwargs["port"] == [5432, 5433]
    assert kwargs["target_session_attrs"] == "read-write"
    assert kwargs["ssl"] == "require"
    assert kwargs["timeout"] == "3"


def test_libpq_comma_host_list() -> None:
    url = normalize_database_url("postgres://app:pw@a:5432,b:5433/catalog")
    assert url.query["host"] == ("a:5432", "b:5433")
    assert url.database == "catalog"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql://app:s3cret@h/db", "unsupported database URL scheme"),
        ("postgresql://app:s3cret@h:notaport/db", "malformed database URL"),
        ("postgresql://app:s3cret@h/db?sslmode=sometimes", "unsupported sslmode"),
        ("postgresql://app:s3cret@h/db?options=-cfoo", "unsupported database URL option"),
    ],
)
def test_bad_urls_are_refused_without_the_password(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        normalize_database_url(raw)
    assert "s3cret" not in str(caught.value)


def test_password_never_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cret@h/db")
    monkeypatch.setenv("TUTORIALS_API_TOKENS", "tok-one, tok-two")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    url = settings.sqlalchemy_url()
    assert url is not None
    for text in (repr(settings), str(settings), repr(url), str(url)):
        assert "s3cret" not in text
        assert "tok-one" not in text
    assert [token.get_secret_value() for token in settings.api_tokens] == ["tok-one", "tok-two"]
    engine = create_async_engine(url)
    assert "s3cret" not in repr(engine)


def test_empty_database_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    assert Settings(_env_file=None).sqlalchemy_url() is None  # type: ignore[call-arg]


def test_invalid_setting_error_does_not_echo_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTORIALS_POOL_SIZE", "s3cret-not-a-number")
    with pytest.raises(ValueError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "s3cret" not in str(caught.value)
    assert "pool_size" in str(caught.value)


def test_fastapis_opentelemetry_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().opentelemetry is False
    monkeypatch.setenv("TUTORIALS_OPENTELEMETRY", "true")
    assert Settings().opentelemetry is True
