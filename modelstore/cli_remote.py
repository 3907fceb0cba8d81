"""CLI for remotes: clone, remote add/list/remove, push, pull, fetch (registered by cli.py).

Progress bars go to stderr (bytes to move after negotiation, throughput); `--json` prints
one summary document on stdout with chunks_sent/bytes_sent/bytes_skipped (push) or
chunks_received/bytes_received/bytes_skipped (pull).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

_JSON = typer.Option("--json", help="Print a JSON summary on stdout.")
_FORCE = typer.Option("--force", help="Overwrite tags that moved on both sides.")


class _Bars:
    """One rich progress display; each version transferred gets a bar once its size is known."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.prog = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             console=Console(stderr=True), transient=False, disable=not sys.stderr.isatty())

    def __call__(self, label: str):
        bars = self

        class _Task:
            task = None

            def start(self, total: int) -> None:
                self.task = bars.prog.add_task(label, total=total)

            def advance(self, n: int) -> None:
                if self.task is not None:
                    bars.prog.advance(self.task, n)

        return _Task()


@contextmanager
def _bars():
    b = _Bars()
    with b.prog:
        yield b


def _store_root() -> Path:
    from modelstore.cli import _state
    from modelstore.config import locate

    return locate(_state["store"])


def _print_summary(doc: dict, as_json: bool, sent_key: str) -> None:
    from modelstore.cli import _emit_json, _size

    if as_json:
        _emit_json(doc)
        return
    moved = doc.get("versions_sent", doc.get("versions_received", []))
    for v in moved:
        print(f"{v['ref']} -> {v['remote_ref']}" if sent_key == "sent" else f"{v['remote_ref']} -> {v['ref']}")
    chunks = doc.get(f"chunks_{sent_key}", 0)
    nbytes = doc.get(f"bytes_{sent_key}", 0)
    print(f"{doc['remote']}: {len(moved)} new versions, {doc.get('versions_merged', 0)} merged; {chunks} chunks "
          f"{sent_key} ({_size(nbytes)}), {doc.get('chunks_skipped', 0)} already there ({_size(doc.get('bytes_skipped', 0))})"
          f" in {doc['seconds']:.1f} s" + (f"; tags moved: {', '.join(doc['tags_moved'])}" if doc.get("tags_moved") else ""))


def register(app: typer.Typer) -> None:
    remote_app = typer.Typer(help="Manage remotes (other stores served over HTTP).", no_args_is_help=True)
    app.add_typer(remote_app, name="remote")

    @remote_app.command("add")
    def remote_add(
        name: Annotated[str, typer.Argument(help="Remote name, e.g. origin.")],
        url: Annotated[str, typer.Argument(help="Server URL, e.g. http://host:8000.")],
        token: Annotated[str | None, typer.Option("--token", help="Access token ($MODELSTORE_TOKEN wins).")] = None,
    ):
        """Add a remote."""
        from modelstore.remote import remotes

        doc = remotes.add(_store_root(), name, url, token)
        print(f"added remote {doc['name']} {doc['url']}" + (" (with token)" if doc["token"] else ""))

    @remote_app.command("list")
    def remote_list(as_json: Annotated[bool, _JSON] = False):
        """List remotes (tokens are never printed)."""
        from modelstore.cli import _emit_json
        from modelstore.remote import remotes

        rows = remotes.list_all(_store_root())
        if as_json:
            _emit_json(rows)
        else:
            for r in rows:
                print(f"{r['name']}\t{r['url']}" + ("\t(token)" if r["token"] else ""))

    @remote_app.command("remove")
    def remote_remove(name: Annotated[str, typer.Argument(help="Remote name.")]):
        """Remove a remote (nothing is deleted on either store)."""
        from modelstore.remote import remotes

        doc = remotes.remove(_store_root(), name)
        print(f"removed remote {doc['name']} ({doc['url']})")

    @app.command()
    def clone(
        url: Annotated[str, typer.Argument(help="Server URL, e.g. http://host:8000.")],
        path: Annotated[Path | None, typer.Argument(help="New store directory (default: ./.modelstore, or --store).")] = None,
        model: Annotated[str | None, typer.Option("--model", help="Clone one model (default: every model).")] = None,
        token: Annotated[str | None, typer.Option("--token", help="Access token kept for origin.")] = None,
        as_json: Annotated[bool, _JSON] = False,
    ):
        """Copy a remote store (or one model) into a new store; the source becomes remote origin."""
        import os

        from modelstore.cli import _state
        from modelstore.config import DIRNAME
        from modelstore.remote.sync import clone as do_clone

        target = path or _state["store"] or os.environ.get("MODELSTORE_DIR") or Path.cwd() / DIRNAME
        with _bars() as bars:
            doc = do_clone(url, target, model=model, token=token, progress=bars)
        if not as_json:
            print(f"cloned {url} into {doc['path']}")
        _print_summary(doc, as_json, "received")

    @app.command()
    def push(
        remote: Annotated[str, typer.Argument(help="Remote name, e.g. origin.")],
        target: Annotated[str | None, typer.Argument(help="MODEL or REF (default: every model).")] = None,
        force: Annotated[bool, _FORCE] = False,
        as_json: Annotated[bool, _JSON] = False,
    ):
        """Send versions the remote lacks (with ancestors); only chunks it lacks travel."""
        from modelstore.cli import _open
        from modelstore.remote.sync import push as do_push

        with _open() as s, _bars() as bars:
            doc = do_push(s, remote, target, force=force, progress=bars)
        _print_summary(doc, as_json, "sent")

    @app.command()
    def pull(
        remote: Annotated[str, typer.Argument(help="Remote name, e.g. origin.")],
        target: Annotated[str | None, typer.Argument(help="MODEL or REF on the remote (default: everything).")] = None,
        force: Annotated[bool, _FORCE] = False,
        as_json: Annotated[bool, _JSON] = False,
    ):
        """Fetch versions this store lacks (with ancestors); only chunks it lacks travel."""
        from modelstore.cli import _open
        from modelstore.remote.sync import pull as do_pull

        with _open() as s, _bars() as bars:
            doc = do_pull(s, remote, target, force=force, progress=bars)
        _print_summary(doc, as_json, "received")

    @app.command()
    def fetch(
        remote: Annotated[str, typer.Argument(help="Remote name, e.g. origin.")],
        model: Annotated[str | None, typer.Argument(help="Model (default: every model).")] = None,
        as_json: Annotated[bool, _JSON] = False,
    ):
        """Catalog only: merge metadata, metrics and comments; list what the remote has that this store lacks."""
        from modelstore.cli import _emit_json, _open
        from modelstore.remote.sync import fetch as do_fetch

        with _open() as s:
            doc = do_fetch(s, remote, model)
        if as_json:
            _emit_json(doc)
            return
        print(f"{doc['remote']}: merged annotations of {doc['versions_merged']} versions")
        for v in doc["remote_only"]:
            print(f"  only on {doc['remote']}: {v['remote_ref']} {v['content_id'][:12]}  (modelstore pull {remote} {v['remote_ref']})")
        for t in doc["tags_differ"]:
            print(f"  tag {t['tag']}: {doc['remote']} {t['remote'][:12]}, here {str(t['local'])[:12]}")
