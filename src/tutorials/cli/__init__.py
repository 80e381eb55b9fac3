"""The command line: `tutorials --help`.

Each group of commands lives in its own module and registers itself on the one Typer app. The
modules import what only some commands need (Alembic, uvicorn, the API, Rich's tables and
progress bars) inside those commands, so that a command's start-up is its own.
"""

import gc

from tutorials.cli import catalog, database, serve, transfer
from tutorials.cli._app import app

for _module in (catalog, database, transfer, serve):
    _module.register(app)


def main() -> None:
    """Console-script entry point.

    `gc.freeze()` first: the modules imported by then (SQLAlchemy, pydantic, ...: some 200,000
    objects) live as long as the process, so the collector stops walking them, in the
    collections a command triggers and above all in the interpreter's teardown, which otherwise
    spends about 0.3 s of CPU here on every command (`tutorials export`, `tutorials get`: a
    quarter of a short command's time). Objects made afterwards are collected as usual.
    """
    gc.freeze()
    app()


__all__ = ["app", "main"]
