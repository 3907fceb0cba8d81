"""HTTP to a remote store: one keep-alive connection per thread, bearer token, user header.

A chunk batch is a list of buffers and pack-file ranges sent back to back on the socket
(ranges with sendfile: the bytes never pass through Python), which keeps a push at the
speed of the socket. A server error envelope
`{"error": {"kind", "message"}}` becomes a RemoteError carrying the same kind.
"""

from __future__ import annotations

import contextlib
import getpass
import http.client
import json
import os
import threading
from urllib.parse import urlencode, urlsplit

from modelstore.errors import ModelstoreError

USER_ENV = "MODELSTORE_USER"


class RemoteError(ModelstoreError):
    """The remote refused a request; `kind` and `http_status` are the server's."""

    def __init__(self, message: str, kind: str = "remote", status: int = 502):
        super().__init__(message)
        self.kind = kind
        self.http_status = status


def current_user() -> str:
    try:
        return os.environ.get(USER_ENV) or getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid
        return "unknown"


class Client:
    def __init__(self, url: str, token: str | None = None, user: str | None = None, name: str = "remote",
                 timeout: float = 600):
        parts = urlsplit(url)
        self.url = url
        self.name = name
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"X-Modelstore-User": user or current_user()}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    def _conn(self, fresh: bool = False):
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = self._local.conn = cls(self.host, self.port, timeout=self.timeout)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, *, params: dict | None = None, body=None, length: int | None = None,
                content_type: str = "application/octet-stream", sink=None) -> bytes:
        """Send one request; returns the response body, or raises RemoteError / a connection error.

        `body`: bytes, or a list of buffers and wire.FileRange segments sent back to back
        (`length` = their total; file ranges go with sendfile, no copy through Python).
        `sink`: called with each piece of a successful response as it arrives (then b"" is
        returned), so the caller can work while the rest downloads."""
        target = self.prefix + path + ("?" + urlencode({k: v for k, v in params.items() if v is not None})
                                       if params else "")
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(length if length is not None else len(body))
        fed = False
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt > 0)
            try:
                if isinstance(body, list):
                    conn.putrequest(method, target, skip_accept_encoding=True)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders()
                    _send_segments(conn.sock, body)
                else:
                    conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                if sink is not None and resp.status < 400:
                    while piece := resp.read(1 << 20):
                        fed = True
                        sink(piece)
                    return b""
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, TimeoutError, OSError) as exc:
                conn.close()
                self._local.conn = None
                # A dropped keep-alive connection is retried once: every call here is idempotent.
                if attempt == 1 or fed or isinstance(exc, TimeoutError):
                    raise RemoteError(f"{self.name}: cannot reach {self.url}: {exc.__class__.__name__}: {exc}",
                                      "unreachable", 502) from None
            except BaseException:  # the sink refused the data: the connection is mid-response
                conn.close()
                self._local.conn = None
                raise
        if resp.status >= 400:
            kind, message = "remote", data[:300].decode("utf-8", "replace")
            try:
                err = json.loads(data)["error"]
                kind, message = err["kind"], err["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise RemoteError(f"{self.name}: {message}", kind, resp.status)
        return data

    def get_json(self, path: str, **params):
        return json.loads(self.request("GET", path, params=params))

    def post_json(self, path: str, doc, **params):
        return json.loads(self.request("POST", path, params=params, body=json.dumps(doc).encode(),
                                       content_type="application/json"))


def _send_segments(sock, segments) -> None:
    """Send buffers and file ranges back to back on a connected socket."""
    from modelstore.errors import IntegrityError
    from modelstore.remote.wire import FileRange

    files: dict = {}
    with contextlib.ExitStack() as stack:
        for seg in segments:
            if isinstance(seg, FileRange):
                f = files.get(seg.path)
                if f is None:
                    f = files[seg.path] = stack.enter_context(open(seg.path, "rb"))
                if sock.sendfile(f, seg.offset, seg.count) != seg.count:
                    raise IntegrityError(f"pack {seg.path.name} is shorter than the index says (run `modelstore fsck`)")
            else:
                sock.sendall(seg)
