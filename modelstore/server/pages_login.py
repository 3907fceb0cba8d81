"""Sign-in for the dashboard of a --private server: a browser cannot send a Bearer header when
it navigates, so /login trades a valid token for a session cookie that reads.

The cookie (HttpOnly, SameSite=Strict, an HMAC of the token, never the token) only reads:
writes keep requiring the Authorization header, which the page scripts send from
localStorage, so a cross-site form can never write. On sign-in with the write token the
login script keeps that token in localStorage for them; /logout clears both.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from modelstore.server.app import SESSION_COOKIE, error_response
from modelstore.server.deps import can_read

router = APIRouter(include_in_schema=False)
COOKIE_MAX_AGE = 30 * 24 * 3600
MAX_FORM = 16 * 1024  # bytes of a login form


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    return target


def login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(here, safe="")


def page_reader(request: Request) -> None:
    """Dependency of the dashboard pages: can_read, but a browser without a valid token or
    cookie is sent to the sign-in page (303) instead of a 401 JSON body."""
    try:
        can_read(request)
    except HTTPException as exc:
        if exc.status_code != 401:
            raise
        raise HTTPException(303, "sign in first", headers={"Location": login_url(request)}) from None


def signed_in(request: Request) -> bool:
    return request.app.state.config.cookie_access(request.cookies.get(SESSION_COOKIE)) is not None


def _render(request: Request, status: int = 200, **ctx) -> HTMLResponse:
    from modelstore.server.pages import render

    cfg = request.app.state.config
    return render(request, "login.html", status=status, title="Sign in", reads_open=not cfg.private, **ctx)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    cfg = request.app.state.config
    return _render(request, next=safe_next(next), error=None, open_server=not (cfg.private or cfg.token),
                   already=signed_in(request))


def _same_origin(request: Request) -> bool:
    """A browser's POST from another site carries its Origin: refuse it (login CSRF)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _read_form(request: Request) -> bytes | None:
    """The form's bytes, or None as soon as it is known to be over MAX_FORM (from
    Content-Length, or while streaming): never more than MAX_FORM bytes in memory."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > MAX_FORM:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    return bytes(body)


@router.post("/login")
async def login(request: Request) -> Response:
    """Form post `token=...&next=...`. A browser gets a 303 to `next` with the cookie (or the
    form again with a 401); the login script (Accept: application/json) gets
    {"access", "next"} and keeps a write token in localStorage."""
    cfg = request.app.state.config
    wants_json = "application/json" in request.headers.get("accept", "")
    body = await _read_form(request)
    if body is None:
        return error_response(413, "too_large", f"a login form is at most {MAX_FORM} bytes")
    form = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    token = (form.get("token") or [""])[0].strip()
    target = safe_next((form.get("next") or ["/"])[0])
    if not _same_origin(request):
        return error_response(403, "forbidden", "sign-in from another site is refused")
    access = cfg.access(f"Bearer {token}") if token else None
    if access is None:
        msg = "that token is not valid on this server" if token else "enter a token"
        if wants_json:
            return error_response(401, "unauthorized", msg)
        return _render(request, status=401, next=target, error=msg, open_server=False, already=False)
    resp: Response = (JSONResponse({"access": access, "next": target}) if wants_json
                      else RedirectResponse(target, status_code=303))
    resp.set_cookie(SESSION_COOKIE, cfg.session_value(token), max_age=COOKIE_MAX_AGE, httponly=True,
                    samesite="strict", secure=request.url.scheme == "https", path="/")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@router.get("/logout", response_class=HTMLResponse)
def logout(request: Request):
    """Clear the cookie here and the stored write token in the page (static/login.js)."""
    resp = _render(request, next="/", error=None, open_server=False, already=False, signed_out=True, signed_in=False)
    resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return resp
