"""Upload: an HTTP request body streamed to a temp file inside the store, then committed.

The body is never held in memory: chunks go to `<store>/tmp/upload-*` as they arrive. The
size limit is checked from Content-Length before reading and again while streaming; a body
shorter than its Content-Length (a client that hung up) is refused. The temp file is
removed in every case, and nothing is committed unless the whole body arrived.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from starlette.requests import ClientDisconnect, Request

from modelstore.errors import InvalidInputError

DEFAULT_MAX_UPLOAD = 64 << 30  # 64 GiB
SUFFIXES = {"safetensors": ".safetensors", "npz": ".npz", "pt": ".pt"}  # download formats
# upload ?format= -> the temp file's suffix, which is how the readers (modelstore.formats) pick
UPLOAD_SUFFIXES = {"safetensors": ".safetensors", "npz": ".npz", "pt": ".pt", "torch": ".pt", "onnx": ".onnx",
                   "gguf": ".gguf", "h5": ".h5", "keras": ".keras"}
_ONNX_NEXT_TAGS = frozenset(b"\x12\x1a\x22\x28\x32\x3a\x42")  # ModelProto fields 2..8, after ir_version


class TooLargeError(InvalidInputError):
    """The body is larger than the server's upload limit."""

    kind = "too_large"
    http_status = 413


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise InvalidInputError(f"Content-Length {raw[:40]!r} is not a number")
    return int(raw)


def check_declared(request: Request, limit: int) -> int | None:
    """Refuse before reading anything when Content-Length already exceeds the limit."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise TooLargeError(f"upload of {declared} bytes exceeds this server's limit of {limit} bytes")
    return declared


async def receive_to_file(request: Request, directory: Path, limit: int, fmt: str | None) -> Path:
    """Stream the request body into a new temp file in `directory`; returns its path.

    On any error (too large, truncated, disconnected, disk full) the file is removed first.
    """
    declared = check_declared(request, limit)
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=UPLOAD_SUFFIXES.get(fmt or "", ""), dir=directory)
    path = Path(name)
    got = 0
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                async for chunk in request.stream():
                    got += len(chunk)
                    if got > limit:
                        raise TooLargeError(f"upload exceeds this server's limit of {limit} bytes")
                    f.write(chunk)  # small (~64 KiB) page-cache writes: cheaper than a thread hop
            except ClientDisconnect:
                raise InvalidInputError(f"truncated upload: the client went away after {got} bytes"
                                        + (f" of {declared}" if declared is not None else "")) from None
        if declared is not None and got != declared:
            raise InvalidInputError(f"truncated upload: received {got} of the {declared} bytes announced")
        if got == 0:
            raise InvalidInputError("empty upload: send the checkpoint file as the request body")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _looks_like_onnx(path: Path) -> bool:
    """ONNX has no magic bytes; a ModelProto starts with field 1 (ir_version, a small varint)
    followed by one of fields 2..8 (protobuf writes fields in number order)."""
    with open(path, "rb") as f:
        head = f.read(3)
    return len(head) == 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in _ONNX_NEXT_TAGS


def settle_format(path: Path, fmt: str | None) -> Path:
    """The upload's path with a suffix its reader recognises: given by ?format=, else
    sniffed (ONNX, which has no magic bytes, by the shape of its first protobuf fields)."""
    if fmt is not None:
        return path
    from modelstore.formats import detect_format

    try:
        detect_format(path)
        return path
    except InvalidInputError:
        if not _looks_like_onnx(path):
            raise
    onnx = path.with_suffix(".onnx")
    path.rename(onnx)
    return onnx


def scrub(exc: BaseException, *paths: Path) -> BaseException:
    """The error with the server's temp paths replaced by 'the uploaded file' (clients must
    not learn where the store lives)."""
    names = sorted({str(p) for p in paths}, key=len, reverse=True)

    def clean(a):
        if not isinstance(a, str):
            return a
        for n in names:
            a = a.replace(n, "the uploaded file")
        return a

    exc.args = tuple(clean(a) for a in exc.args)
    if isinstance(exc, OSError) and exc.filename is not None:
        exc.filename = clean(str(exc.filename))
    return exc
