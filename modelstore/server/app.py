"""Build the FastAPI app for one store: per-thread Store handles, auth, one error envelope.

Every error leaves the server as `{"error": {"kind": ..., "message": ...}}` with the status of
its kind (modelstore.errors), so clients branch on `kind`, never on text. The exception: a
dashboard page (any path outside /api) with a query parameter that does not parse gets the
dashboard's HTML error page with status 400, not FastAPI's JSON 422.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import threading
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelstore import __version__
from modelstore.errors import ModelstoreError

TOKEN_ENV = "MODELSTORE_SERVER_TOKEN"
READ_TOKEN_ENV = "MODELSTORE_SERVER_READ_TOKEN"
SESSION_COOKIE = "modelstore_session"  # set by the dashboard's /login; grants reads only

# Routers mounted when their module exists; each module exposes `router` (an APIRouter).
ROUTER_MODULES = ("modelstore.server.api", "modelstore.server.sync", "modelstore.server.pages")


class ServerConfig:
    """What the server was started with: the store root and the tokens it accepts."""

    def __init__(self, root: Path, token: str | None = None, read_tokens: tuple[str, ...] = (),
                 private: bool = False, max_upload_bytes: int | None = None):
        from modelstore.server.upload import DEFAULT_MAX_UPLOAD

        self.root = Path(root)
        self.max_upload_bytes = DEFAULT_MAX_UPLOAD if max_upload_bytes is None else int(max_upload_bytes)
        self.token = token or None          # read-write token (None: writes are open)
        self.read_tokens = tuple(t for t in read_tokens if t)
        self.private = private              # reads need a token too

    def access(self, authorization: str | None) -> str | None:
        """'write', 'read' or None for an Authorization header value (the scheme "Bearer" in
        any case, as RFC 7235 allows)."""
        scheme, _, rest = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not rest.strip():
            return None
        given = rest.strip().encode()
        if self.token and hmac.compare_digest(given, self.token.encode()):
            return "write"
        if any(hmac.compare_digest(given, t.encode()) for t in self.read_tokens):
            return "read"
        return None

    def denial(self, authorization: str | None, cookie: str | None, need: str) -> tuple[int, str] | None:
        """None when a request with these credentials may `need` ('read' or 'write'), else the
        (401 or 403, message) to refuse it with. The login cookie only ever reads."""
        got = self.access(authorization)
        if got is None and need == "read":
            got = self.cookie_access(cookie)
        if need == "read" and (not self.private or got in ("read", "write")):
            return None
        if need == "write" and (self.token is None and not self.private or got == "write"):
            return None
        if got is None:
            return 401, "a valid token is required: send 'Authorization: Bearer <token>'"
        return 403, "this token may only read"

    def session_value(self, token: str) -> str:
        """The login cookie of a token: an HMAC of it, so the cookie is never a token itself
        (a stolen cookie reads, it cannot be sent as a Bearer token to write)."""
        return hmac.new(token.encode(), b"modelstore dashboard session v1", hashlib.sha256).hexdigest()

    def cookie_access(self, value: str | None) -> str | None:
        """'read' when `value` is the session cookie of a configured token, else None."""
        if not value:
            return None
        given = value.encode()
        tokens = ((self.token,) if self.token else ()) + self.read_tokens
        if any(hmac.compare_digest(given, self.session_value(t).encode()) for t in tokens):
            return "read"
        return None


class StoreHandles:
    """Open Stores of this server; a catalog's SQLite connection is never used by two requests
    at once (the LMDB environment is shared process-wide underneath).

    - lease(): a Store owned by one request until it returns it (deps.store uses this:
      FastAPI may run a dependency and its endpoint on different pool threads, so a
      per-thread handle obtained in the dependency could be in use by another request);
    - get(): the Store of the calling thread, for code that runs wholly on one thread.
    """

    def __init__(self, root: Path):
        self.root = root
        self._local = threading.local()
        self._free: list = []
        self._all: list = []
        self._lock = threading.Lock()

    def _open(self):
        from modelstore.store import Store

        s = Store.open(self.root)
        with self._lock:
            self._all.append(s)
        return s

    def get(self):
        s = getattr(self._local, "store", None)
        if s is None:
            s = self._local.store = self._open()
        return s

    @contextmanager
    def lease(self):
        with self._lock:
            s = self._free.pop() if self._free else None
        if s is None:
            s = self._open()
        try:
            yield s
        finally:
            if s.catalog.db.in_transaction:  # never hand on a connection inside a transaction
                s.catalog.db.execute("ROLLBACK")
            with self._lock:
                self._free.append(s)

    def close(self) -> None:
        with self._lock:
            for s in self._all:
                s.close()
            self._all.clear()
            self._free.clear()


def error_body(kind: str, message: str) -> dict:
    return {"error": {"kind": kind, "message": message}}


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


_HTTP_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 422: "invalid_input"}


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 1 << 20  # bytes of a JSON annotation body or a login form
_READING_POSTS = ("/api/sync/bases", "/api/sync/records")  # POSTs that only read


def _has_own_limit(method: str, path: str) -> bool:
    """Uploads and sync stream large bodies to disk under their own limits."""
    return path.startswith("/api/sync/") or (
        method == "POST" and path.startswith("/api/models/") and path.rstrip("/").endswith("/versions"))


class GuardMiddleware:
    """Pure ASGI, so it runs before any body byte is read: a write under /api/ without the
    right token is refused (401/403), and a body over MAX_BODY on a route without its own
    limit is refused from Content-Length, or as soon as the stream passes it (413)."""

    def __init__(self, app, config: ServerConfig, max_body: int = MAX_BODY):
        self.app, self.config, self.max_body = app, config, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers
        from starlette.requests import cookie_parser

        method, path, headers = scope["method"], scope["path"], Headers(scope=scope)
        if path.startswith("/api/"):
            cookie = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
            refused = self.config.denial(headers.get("authorization"), cookie,
                                         "read" if path in _READING_POSTS else "write")
            if refused is not None:
                status, message = refused
                extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return await error_response(status, _HTTP_KINDS[status], message, extra)(scope, receive, send)
        if _has_own_limit(method, path):
            return await self.app(scope, receive, send)
        limit, declared = self.max_body, headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            return await error_response(413, "too_large", f"a request body here is at most {limit} bytes, "
                                                          f"not {declared}")(scope, receive, send)
        got = 0

        async def capped():
            nonlocal got
            message = await receive()
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                if got > limit:
                    raise StarletteHTTPException(413, f"a request body here is at most {limit} bytes")
            return message

        return await self.app(scope, capped, send)


def _is_api(path: str) -> bool:
    """The JSON API (its errors are the JSON envelope); every other route is a dashboard page."""
    return path == "/api" or path.startswith("/api/")


def _offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) with its script and stylesheet served from the swagger-ui-bundle
    package, not a CDN, so the API docs work on a machine without internet."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        import swagger_ui_bundle
    except ImportError:  # FastAPI's default page (assets from a CDN)
        swagger_ui_bundle = None
    if swagger_ui_bundle is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
        js, css = "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"
    else:
        js = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
        css = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="modelstore API",
                                   swagger_js_url=js, swagger_css_url=css, swagger_favicon_url="data:,")


def create_app(root: str | os.PathLike, *, token: str | None = None, read_tokens=(),
               private: bool = False, max_upload_bytes: int | None = None) -> FastAPI:
    """The app serving the store at `root` (which must exist); uploads up to `max_upload_bytes`
    (default 64 GiB)."""
    from modelstore.config import locate

    root = locate(root)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.stores.close()

    app = FastAPI(title="modelstore", version=__version__, lifespan=lifespan, docs_url=None,
                  description="A database for model versions: browse, query, diff, push and pull.")
    _offline_docs(app)
    app.state.config = ServerConfig(root, token=token, read_tokens=tuple(read_tokens), private=private,
                                    max_upload_bytes=max_upload_bytes)
    app.state.stores = StoreHandles(root)
    app.add_middleware(GuardMiddleware, config=app.state.config)

    @app.exception_handler(ModelstoreError)
    async def _ms_error(request: Request, exc: ModelstoreError):
        return error_response(exc.http_status, exc.kind, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = _HTTP_KINDS.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        if 300 <= exc.status_code < 400 and headers and "Location" in headers:  # the dashboard's sign-in redirect
            return Response(status_code=exc.status_code, headers=headers)
        return error_response(exc.status_code, kind, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        if not _is_api(request.url.path):  # a dashboard page: its HTML error page, status 400
            from modelstore.server.pages import bad_params_page

            return bad_params_page(request, list(exc.errors()))
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(422, "invalid_input", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        return error_response(500, "internal", f"{type(exc).__name__}: {exc}")

    for name in ROUTER_MODULES:
        if importlib.util.find_spec(name) is not None:
            app.include_router(importlib.import_module(name).router)
    return app
