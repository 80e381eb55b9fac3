"""The HTTP face: a FastAPI app over the same repository and unit of work as every face.

`create_app(settings, database)` builds it; `tutorials serve` runs it with uvicorn.
"""

from tutorials.api.app import create_app

__all__ = ["create_app"]
