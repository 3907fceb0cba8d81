"""`modelstore serve`: the HTTP API and dashboard over one store, with uvicorn.

Registered into the CLI by cli.py (register(app)); uvicorn and FastAPI are imported only
when the command runs.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Annotated, Optional

import typer

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "t": 10**12, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """'1048576', '100MB', '64GiB' -> bytes."""
    from modelstore.errors import InvalidInputError

    raw = text.strip()
    num = raw.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = raw[len(num):].strip().lower()
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not (math.isfinite(value) and value >= 0):
        raise InvalidInputError(f"--max-upload {text[:40]!r} is not a size (e.g. 1048576, 500MB, 64GiB)")
    return int(value * _UNITS[unit])


def check_port(host: str, port: int) -> None:
    """Refuse, as one line, an address this server cannot listen on (port in use, unknown
    host, no permission) before announcing it; uvicorn would log and exit 3 instead."""
    import socket

    from modelstore.errors import InvalidInputError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInputError(f"cannot serve on host {host[:80]!r}: {getattr(e, 'strerror', None) or e}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as e:
            import errno

            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound: {e.strerror}"
            raise InvalidInputError(f"port {port} on {host} {why} (choose another with --port)") from None


def _tokens_from_env(name: str) -> list[str]:
    return [t.strip() for t in os.environ.get(name, "").split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: every interface).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
        token: Annotated[Optional[str], typer.Option(
            "--token", envvar="MODELSTORE_SERVER_TOKEN", show_envvar=True,
            help="Read-write token: every write then needs 'Authorization: Bearer TOKEN'.")] = None,
        read_token: Annotated[Optional[list[str]], typer.Option(
            "--read-token", help="Read-only token (repeatable; or $MODELSTORE_SERVER_READ_TOKEN, comma-separated).")] = None,
        private: Annotated[bool, typer.Option("--private", help="Reads need a token too.")] = False,
        max_upload: Annotated[str, typer.Option("--max-upload", help="Largest upload accepted (bytes, or e.g. 500MB, 64GiB).")] = "64GiB",
    ):
        """Serve the store over HTTP: JSON API under /api, dashboard at /, OpenAPI at /docs."""
        from modelstore.cli import _state
        from modelstore.config import locate
        from modelstore.errors import InvalidInputError
        from modelstore.server.app import READ_TOKEN_ENV

        reads = [t for t in (read_token or []) if t] or _tokens_from_env(READ_TOKEN_ENV)
        if private and not (token or reads):
            raise InvalidInputError("--private needs a token: give --token (or --read-token), or set "
                                    "MODELSTORE_SERVER_TOKEN")
        limit = parse_bytes(max_upload)
        root = locate(_state["store"])
        from modelstore.store import Store

        Store.open(root).close()  # a missing or unreadable store fails here, as one line

        check_port(host, port)
        import uvicorn

        from modelstore.server.app import create_app

        web = create_app(root, token=token, read_tokens=reads, private=private, max_upload_bytes=limit)
        shown = f"[{host}]" if ":" in host else host
        sys.stderr.write(f"modelstore: serving {root} at http://{shown}:{port}  (API docs: /docs)\n")
        if token is None and host not in ("127.0.0.1", "localhost", "::1"):
            sys.stderr.write("modelstore: warning: no --token, so anyone who can reach this address can write\n")
        sys.stderr.flush()
        uvicorn.run(web, host=host, port=port, log_level="warning", access_log=False)
