"""`tutorials serve` in a subprocess, for every suite that needs the real service.

The one harness for it: the CLI's tests (start-up lines, signals), the fault tests (the service
must live through what the database does), the bounds and secret-leak tests and the PgBouncer
load all start the service through `ServiceProcess`. It runs with an environment we choose
(`service_env`: none of the developer's `TUTORIALS_*`), in a working directory of the test's
own (no developer `.env`), on a free loopback port, its output in a file the test can read;
it is always stopped, SIGTERM first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support import free_port

from tutorials.settings import Settings

LOOPBACK = "127.0.0.1"


def known_settings(names: Iterable[str]) -> None:
    """Refuse names Settings does not have: it ignores them, so a setting renamed or removed
    (as `max_overflow` was) would silently leave a test running on the default."""
    unknown = sorted(set(names) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"Settings has no {', '.join(unknown)}")


def service_env(database_url: str, **settings: str) -> dict[str, str]:
    """A clean environment for `tutorials serve`: ours, without the developer's TUTORIALS_*.

    `settings` are `TUTORIALS_*` variables, each naming a setting that exists."""
    known_settings(name.removeprefix("TUTORIALS_").lower() for name in settings)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TUTORIALS_") and key not in ("DATABASE_URL", "TEST_DATABASE_URL")
    }
    env["DATABASE_URL"] = database_url
    env["TUTORIALS_AUTO_MIGRATE"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


@dataclass
class ServiceProcess:
    """`tutorials serve` in a subprocess; its output goes to a file we can grep afterwards."""

    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"service-{self.port}.log"

    def command(self) -> list[str]:
        return [
            sys.executable, "-c", "from tutorials.cli import main; main()",
            "serve", "--port", str(self.port), *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=self.workdir,  # no developer .env here
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_healthy(self, within: float = 30, path: str = "/healthz") -> None:
        """Until `path` answers 200 (`/readyz`: the database is reachable and at head too)."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"the service exited early:\n{self.output()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(path)).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the service did not become healthy:\n{self.output()[-3000:]}")

    def wait_healthy_blocking(self, within: float = 30, path: str = "/healthz") -> None:
        """`wait_healthy` for sync tests and fixtures."""
        deadline = time.monotonic() + within
        with httpx.Client(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"the service exited early:\n{self.output()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(path).status_code == 200:
                        return
                time.sleep(0.05)
        raise RuntimeError(f"the service did not become healthy:\n{self.output()[-3000:]}")

    def error_lines(self) -> list[str]:
        """Log lines at level error or above (JSON lines) and any raw traceback."""
        return [
            line
            for line in self.output().splitlines()
            if '"level": "error"' in line
            or '"level": "critical"' in line
            or line.startswith("Traceback")
        ]

    def json_lines(self) -> list[dict[str, object]]:
        """The log's JSON lines (the default log format when not on a terminal), parsed."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def send_signal(self, signum: int) -> None:
        assert self.process is not None, "the service was never started"
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended (within `timeout` seconds)."""
        assert self.process is not None, "the service was never started"
        return self.process.wait(timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def output(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def start_service(
    env: dict[str, str], workdir: Path, *args: str, ready_path: str = "/healthz"
) -> ServiceProcess:
    """Start `tutorials serve` and block until `ready_path` answers (for sync tests and
    fixtures); the caller stops it."""
    workdir.chmod(0o755)
    service = ServiceProcess(env=env, workdir=workdir, extra_args=args)
    service.start()
    try:
        service.wait_healthy_blocking(path=ready_path)
    except BaseException:
        service.stop()
        raise
    return service


@contextlib.asynccontextmanager
async def running_service(
    env: dict[str, str], workdir: Path, *extra_args: str
) -> AsyncIterator[ServiceProcess]:
    """Start the service, wait for /healthz, yield it, and always stop it."""
    service = ServiceProcess(env=env, workdir=workdir, extra_args=extra_args)
    service.start()
    try:
        await service.wait_healthy()
        yield service
    finally:
        service.stop()
