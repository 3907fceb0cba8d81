"""The HTTP layer: a FastAPI app over one store — JSON API (api.py), sync protocol for
remotes (sync.py), dashboard pages (pages.py), all thin over modelstore.Store."""

from modelstore.server.app import create_app

__all__ = ["create_app"]
