"""The command line: `tutorials --help`.

Each group of commands lives in its own module and registers itself on the one Typer app.
"""

from tutorials.cli import catalog, database, serve, transfer
from tutorials.cli._app import app

for _module in (catalog, database, transfer, serve):
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
