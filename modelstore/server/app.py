"""Build the FastAPI app for one store: per-thread Store handles, auth, one error envelope.

Every error leaves the server as `{"error": {"kind": ..., "message": ...}}` with the status of
its kind (modelstore.errors), so clients branch on `kind`, never on text.
"""

from __future__ import annotations

import hmac
import importlib
import os
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelstore import __version__
from modelstore.errors import ModelstoreError

TOKEN_ENV = "MODELSTORE_SERVER_TOKEN"
READ_TOKEN_ENV = "MODELSTORE_SERVER_READ_TOKEN"

# Routers mounted when their module exists; each module exposes `router` (an APIRouter).
ROUTER_MODULES = ("modelstore.server.api", "modelstore.server.sync", "modelstore.server.pages")


class ServerConfig:
    """What the server was started with: the store root and the tokens it accepts."""

    def __init__(self, root: Path, token: str | None = None, read_tokens: tuple[str, ...] = (),
                 private: bool = False):
        self.root = Path(root)
        self.token = token or None          # read-write token (None: writes are open)
        self.read_tokens = tuple(t for t in read_tokens if t)
        self.private = private              # reads need a token too

    def access(self, authorization: str | None) -> str | None:
        """'write', 'read' or None for an Authorization header value."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization[len("Bearer "):].strip().encode()
        if self.token and hmac.compare_digest(given, self.token.encode()):
            return "write"
        if any(hmac.compare_digest(given, t.encode()) for t in self.read_tokens):
            return "read"
        return None


class StoreHandles:
    """One open Store per server thread: the catalog's SQLite connection is not shared
    across concurrent requests; the LMDB environment is shared process-wide underneath."""

    def __init__(self, root: Path):
        self.root = root
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def get(self):
        s = getattr(self._local, "store", None)
        if s is None:
            from modelstore.store import Store

            s = Store.open(self.root)
            self._local.store = s
            with self._lock:
                self._all.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._all:
                s.close()
            self._all.clear()


def error_body(kind: str, message: str) -> dict:
    return {"error": {"kind": kind, "message": message}}


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


_HTTP_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 422: "invalid_input"}


def create_app(root: str | os.PathLike, *, token: str | None = None, read_tokens=(),
               private: bool = False) -> FastAPI:
    """The app serving the store at `root` (which must exist)."""
    from modelstore.config import locate

    root = locate(root)
    app = FastAPI(title="modelstore", version=__version__,
                  description="A database for model versions: browse, query, diff, push and pull.")
    app.state.config = ServerConfig(root, token=token, read_tokens=tuple(read_tokens), private=private)
    app.state.stores = StoreHandles(root)

    @app.exception_handler(ModelstoreError)
    async def _ms_error(request: Request, exc: ModelstoreError):
        return error_response(exc.http_status, exc.kind, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = _HTTP_KINDS.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        return error_response(exc.status_code, kind, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(422, "invalid_input", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        return error_response(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.on_event("shutdown")
    def _close() -> None:
        app.state.stores.close()

    for name in ROUTER_MODULES:
        if importlib.util.find_spec(name) is not None:
            app.include_router(importlib.import_module(name).router)
    return app
