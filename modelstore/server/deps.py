"""Request dependencies shared by every router: the store for this thread, and access checks."""

from __future__ import annotations

from fastapi import HTTPException, Request

from modelstore.server.app import SESSION_COOKIE


def store(request: Request):
    """A Store this request holds alone until its response is sent (streamed bodies included)."""
    with request.app.state.stores.lease() as s:
        yield s


def _deny(request: Request, need: str) -> None:
    refused = request.app.state.config.denial(request.headers.get("authorization"),
                                              request.cookies.get(SESSION_COOKIE), need)
    if refused is None:
        return
    status, message = refused
    raise HTTPException(status, message, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def can_read(request: Request) -> None:
    """Dependency: reads are open unless the server is --private; then a token (header) or
    the dashboard's login cookie is needed."""
    _deny(request, "read")


def can_write(request: Request) -> None:
    """Dependency: with a token configured every write needs it."""
    _deny(request, "write")


def author(request: Request) -> str | None:
    """Who is writing: the X-Modelstore-User header if given (recorded as the author)."""
    return request.headers.get("x-modelstore-user") or None
