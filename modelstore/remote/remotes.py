"""The remotes of a store, in config.json: name -> {"url", "token", "tags"}.

`tags` is what each tag of the remote pointed at after the last push or pull
("model@tag" -> content id): the common base that tells a tag moved on one side from one
moved on both. MODELSTORE_TOKEN in the environment wins over a stored token.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from modelstore import config as cfg
from modelstore.errors import AlreadyExistsError, InvalidInputError, NotFoundError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
TOKEN_ENV = "MODELSTORE_TOKEN"


def check_url(url: str) -> str:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"remote URL {str(url)[:100]!r} is not http(s)://host[:port][/path]")
    return url.rstrip("/")


def _load(root) -> dict:
    return dict(cfg.read(root).remotes)


def add(root, name: str, url: str, token: str | None = None) -> dict:
    if not NAME.match(name or ""):
        raise InvalidInputError(f"invalid remote name {str(name)[:60]!r}: a letter, then letters, digits, '.', '_', '-'")
    remotes = _load(root)
    if name in remotes:
        raise AlreadyExistsError(f"remote {name!r} already exists ({remotes[name].get('url')}); remove it first")
    remotes[name] = {"url": check_url(url), "token": token or None, "tags": {}}
    cfg.write_remotes(root, remotes)
    return describe(name, remotes[name])


def remove(root, name: str) -> dict:
    remotes = _load(root)
    if name not in remotes:
        raise NotFoundError(f"no remote named {name[:60]!r} (see `modelstore remote list`)")
    gone = remotes.pop(name)
    cfg.write_remotes(root, remotes)
    return describe(name, gone)


def list_all(root) -> list[dict]:
    return [describe(n, r) for n, r in sorted(_load(root).items())]


def describe(name: str, r: dict) -> dict:
    return {"name": name, "url": r.get("url"), "token": bool(r.get("token"))}


def get(root, name: str) -> dict:
    """{"name", "url", "token"} of a remote; the token from MODELSTORE_TOKEN when set."""
    remotes = _load(root)
    if name not in remotes:
        raise NotFoundError(f"no remote named {name[:60]!r} (add one: `modelstore remote add {name[:60]} URL`)")
    r = remotes[name]
    return {"name": name, "url": check_url(r.get("url", "")), "token": os.environ.get(TOKEN_ENV) or r.get("token")}


def tracked_tags(root, name: str) -> dict[str, str]:
    return dict((_load(root).get(name) or {}).get("tags") or {})


def set_tracked_tags(root, name: str, tags: dict[str, str]) -> None:
    remotes = _load(root)
    if name in remotes:
        remotes[name] = {**remotes[name], "tags": dict(sorted(tags.items()))}
        cfg.write_remotes(root, remotes)
