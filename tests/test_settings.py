"""Settings: URL forms normalised to asyncpg, and a password that never shows."""

from __future__ import annotations

from pathlib import Path

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
    assert float(kwargs["timeout"]) == 3.0


def test_libpq_comma_host_list() -> None:
    url = normalize_database_url("postgres://app:pw@a:5432,b:5433/catalog")
    assert url.query["host"] == ("a:5432", "b:5433")
    assert url.database == "catalog"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql://app:s3cret@h/db", "unsupported database URL scheme"),
        ("postgresql://app:s3cret@h:notaport/db", "malformed host"),
        ("postgresql://app:s3cret@h/db?connect_timeout=soon", "must be a number"),
        ("postgresql://app:s3cret@h/db?target_session_attrs=any-old", "target_session_attrs"),
        ("postgresql://app:s3cret@h/db#frag", "fragment"),
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


def test_replica_urls_split_on_spaces_and_commas_but_not_inside_a_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "TUTORIALS_REPLICA_URLS",
        "postgresql://app:pw@r1:5432/db,postgres://app:pw@r2:5432,r3:5433/db"
        "?target_session_attrs=standby  postgresql+asyncpg://app:pw@r4/db",
    )
    replicas = Settings(_env_file=None).replicas()  # type: ignore[call-arg]
    assert [replica.rendered() for replica in replicas] == [
        "postgresql://app:***@r1:5432/db",
        "postgresql://app:***@r2:5432,r3:5433/db?target_session_attrs=standby",
        "postgresql://app:***@r4/db",
    ]


def test_a_bad_replica_url_is_named_by_its_place_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUTORIALS_REPLICA_URLS", "postgresql://a:pw@r1/db mysql://b:s3cret@r2/db")
    with pytest.raises(ValueError) as raised:
        Settings(_env_file=None).replicas()  # type: ignore[call-arg]
    assert str(raised.value).startswith("replica URL 2: unsupported database URL scheme 'mysql'")
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in repr(Settings(_env_file=None))  # type: ignore[call-arg]


def test_no_replicas_by_default() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.replicas() == []
    assert (settings.replica_pool_size, settings.replica_max_lag_ms) == (20, 1000)
    assert (settings.workers, settings.connection_reserve) == (1, 5)


# --- Where values come from -------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the developer's environment."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("TUTORIALS_") or key.upper() == "DATABASE_URL":
            monkeypatch.delenv(key)
    return monkeypatch


def test_keywords_then_environment_then_env_file_then_defaults(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "TUTORIALS_POOL_SIZE=7\nTUTORIALS_POOL_TIMEOUT=4.5\nTUTORIALS_APPLICATION_NAME=from-file\n"
        "DATABASE_URL=postgresql://file@h/db\nSOMETHING_ELSE=ignored\n"
    )
    clean_environment.setenv("tutorials_pool_timeout", "3")  # any case
    clean_environment.setenv("TUTORIALS_API_TOKENS", " one, two ,, ")
    settings = Settings(_env_file=env_file, application_name="from-keyword")  # type: ignore[call-arg]
    assert (settings.pool_size, settings.pool_timeout) == (7, 3.0)
    assert settings.application_name == "from-keyword"
    assert [token.get_secret_value() for token in settings.api_tokens] == ["one", "two"]
    assert settings.database() is not None and settings.database().dsn == "postgresql://file@h/db"  # type: ignore[union-attr]
    assert settings.statement_timeout_ms == 15_000  # the default
    assert Settings(_env_file=None).pool_size == 20  # type: ignore[call-arg]


def test_the_env_file_is_read_from_the_current_directory(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("TUTORIALS_DATABASE_URL=postgresql://dot@env/db\n")
    clean_environment.chdir(tmp_path)
    assert Settings().database().dsn == "postgresql://dot@env/db"  # type: ignore[union-attr]
    clean_environment.setenv("DATABASE_URL", "postgresql://env@var/db")
    assert Settings().database().dsn == "postgresql://env@var/db"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "value"), [("false", False), ("0", False), ("no", False), ("TRUE", True), ("1", True)]
)
def test_booleans_read_as_people_write_them(
    clean_environment: pytest.MonkeyPatch, raw: str, value: bool
) -> None:
    clean_environment.setenv("TUTORIALS_AUTO_MIGRATE", raw)
    assert Settings(_env_file=None).auto_migrate is value  # type: ignore[call-arg]
