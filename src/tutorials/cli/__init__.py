"""The command line: `tutorials --help`.

Each group of commands lives in its own module and registers itself on the one Typer app.
"""

from tutorials.cli import catalog, database
from tutorials.cli._app import app

for _module in (catalog, database):
    _module.register(app)

try:  # optional faces, present once their modules exist
    from tutorials.cli import serve as _serve

    _serve.register(app)
except ImportError:  # pragma: no cover
    pass
try:
    from tutorials.cli import transfer as _transfer

    _transfer.register(app)
except ImportError:  # pragma: no cover
    pass


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
