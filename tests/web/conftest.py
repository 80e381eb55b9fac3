"""Fixtures for the page: the API app's (in-process clients), and a real browser.

The browser tests drive Debian's Chromium (`apt-get install chromium`) with Playwright for
Python, launched by `executable_path` (Playwright's own browser download is not possible
here). The app runs in-process under uvicorn on a free loopback port, on this test's own
database, opened by the app's lifespan on the server's event loop. Every page the tests open
fails its test on any console error, uncaught page error or dialog that the test did not
announce as expected (`Page.expect_console`). Screenshots go to tests/web/screenshots/
(git-ignored).

Without chromium or Playwright the browser tests skip on a developer's machine; in CI a skip
fails the run (tests/skips.py lists none for them), and `.ci/run` installs chromium.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from sqlalchemy.engine import URL
from tests.api.conftest import app, client, make_client
from tests.support import free_port

from tutorials.api import create_app
from tutorials.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

__all__ = ["app", "client", "make_client"]

SCREENSHOTS = Path(__file__).with_name("screenshots")
TOKEN = "page-token-for-tests"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module (each test gets contexts of its own). Not per session:
    Playwright's sync API holds an event loop on this thread while it runs, and the async
    tests of the other modules need the thread's loop to themselves."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev group has it
        pytest.skip("playwright is not installed (./dev test installs the dev group)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Served:
    """The app served over HTTP on loopback."""

    base_url: str
    tokens: bool


class _Uvicorn:
    """uvicorn in a thread of its own (its own event loop), stopped at the end."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            ws="none",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-web-tests")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _serve(database_url: URL, settings: Settings, tokens: bool) -> Iterator[Served]:
    app_settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url.render_as_string(hide_password=False),
        auto_migrate=False,
        api_tokens=TOKEN if tokens else "",
        pgbouncer=settings.pgbouncer,
    )
    with _Uvicorn(app_settings) as base_url:
        yield Served(base_url, tokens)


@pytest.fixture
def served(database_url: URL, settings: Settings) -> Iterator[Served]:
    """The app on this test's database, without tokens: writes need nothing."""
    yield from _serve(database_url, settings, tokens=False)


@pytest.fixture
def served_with_tokens(database_url: URL, settings: Settings) -> Iterator[Served]:
    """The app on this test's database with `TOKEN` configured: writes need it."""
    yield from _serve(database_url, settings, tokens=True)


#: What Chromium logs by itself for a response with an error status, or a failed request.
_RESOURCE_ERROR = re.compile(
    r"Failed to load resource: (?:the server responded with a status of (\d{3})|net::(\w+))"
)


@dataclass
class Watch:
    """Everything a page said that a test must account for."""

    problems: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)
    allow_offline: bool = False

    def console(self, message: Any) -> None:
        if message.type != "error":
            return
        found = _RESOURCE_ERROR.search(message.text)
        if found and found.group(1) and int(found.group(1)) in self.allowed_statuses:
            return  # a refusal the test provoked on purpose
        if found and found.group(2) and self.allow_offline:
            return
        self.problems.append(f"console error: {message.text}")

    def page_error(self, error: Any) -> None:
        self.problems.append(f"page error: {error}")

    def dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.type} {dialog.message}")
        dialog.dismiss()


class Pages:
    """New pages on `Served`, each watched (`Watch`) and checked when the test ends."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.watches: list[Watch] = []

    def open(self, served: Served, *, dark: bool = False, path: str = "/") -> tuple[Page, Watch]:
        context = self.browser.new_context(
            base_url=served.base_url,
            color_scheme="dark" if dark else "light",
            viewport={"width": 1200, "height": 900},
            accept_downloads=True,
        )
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = context.new_page()
        watch = Watch()
        self.watches.append(watch)
        page.on("console", watch.console)
        page.on("pageerror", watch.page_error)
        page.on("dialog", watch.dialog)
        page.goto(path)
        return page, watch

    def close(self) -> list[str]:
        for context in self.contexts:
            context.close()
        return [problem for watch in self.watches for problem in watch.problems]


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    problems = opened.close()
    assert problems == [], "the page logged errors:\n" + "\n".join(problems)


def screenshot(page: Page, name: str) -> Path:
    """Save the page as tests/web/screenshots/NAME.png (full height)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
