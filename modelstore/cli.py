"""The `modelstore` command line: parse, call the Store, render. Nothing else lives here.

Errors from the library (ModelstoreError) become one line on stderr and their exit code;
usage errors are Typer's (exit 2). Heavy modules are imported inside commands so that
`modelstore --version` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["app", "main"]

from modelstore import __version__ as VERSION

app = typer.Typer(
    name="modelstore",
    help="A database for model versions: commit, log, show, checkout, diff, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state: dict = {"store": None}


def _version(value: bool):
    if value:
        print(f"modelstore {VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    store: Annotated[Optional[Path], typer.Option("--store", help="Store directory (default: $MODELSTORE_DIR, else the nearest .modelstore/).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    _state["store"] = store


def _open():
    from modelstore.store import Store

    return Store.open(_state["store"])


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is for grep and files: no wrapping at an imaginary 80 columns.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 400
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _emit_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _size(n) -> str:
    from modelstore.humanize import scaled

    return scaled(n)


def _progress(total: int, label: str):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    prog = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=_console(stderr=True), transient=True, disable=not sys.stderr.isatty())
    return prog, prog.add_task(label, total=total)


def _parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    from modelstore.errors import InvalidInputError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidInputError(f"{what} {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


# -- commands -------------------------------------------------------------------------
@app.command()
def init(
    path: Annotated[Optional[Path], typer.Argument(help="Directory to create (default: ./.modelstore, or --store).")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="Target raw bytes per chunk (default 4 MiB).")] = None,
):
    """Create a new, empty store."""
    from modelstore.config import DIRNAME
    from modelstore.store import Store

    target = path or _state["store"] or os.environ.get("MODELSTORE_DIR") or Path.cwd() / DIRNAME
    s = Store.init(target, chunk_target_bytes=chunk_size)
    s.close()
    print(f"Initialized empty modelstore in {Path(target).resolve()}")


@app.command()
def commit(
    path: Annotated[Path, typer.Argument(help="Checkpoint: .safetensors, HF folder, .npz, .pt/.pth/.bin.")],
    model: Annotated[str, typer.Option("--model", help="Model name (the version line to extend).")],
    message: Annotated[str, typer.Option("-m", "--message", help="Commit message.")] = "",
    meta: Annotated[Optional[list[str]], typer.Option("--meta", help="KEY=VALUE metadata (repeatable).")] = None,
    parent: Annotated[Optional[list[str]], typer.Option("--parent", help="Parent REF (default: the model's latest version).")] = None,
    author: Annotated[Optional[str], typer.Option(help="Author (default: $MODELSTORE_AUTHOR or the user name).")] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="DATASET:NAME=VALUE metric (repeatable), e.g. imagenet-val:accuracy=0.93.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new version as JSON.")] = False,
):
    """Store a checkpoint as the next version of a model."""
    from modelstore.annotate import parse_metric_option
    from modelstore.errors import NotFoundError

    metrics = [parse_metric_option(m) for m in metric or []]
    if not path.exists():
        raise NotFoundError(f"{path}: no such file or directory")
    with _open() as s:
        total = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
        prog, task = _progress(total, "commit")
        with prog:
            info = s.commit(path, model=model, message=message, meta=_parse_kv(meta, "--meta"),
                            parent=parent or None, author=author, metrics=metrics,
                            progress=lambda n: prog.advance(task, n))
    if as_json:
        _emit_json(info.to_dict())
    else:
        print(f"{info.ref} {info.content_id[:12]}  {_size(info.size)} ({_size(info.stored)} new)  {info.message}")


@app.command()
def log(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default: every model).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """List versions: number, content id, size, new bytes stored, author, message."""
    from rich.table import Table
    from rich.text import Text

    with _open() as s:
        versions = s.log(model)
    if as_json:
        _emit_json([v.to_dict() for v in versions])
        return
    rows = [(v.ref, v.content_id[:12], v.created, _size(v.size), _size(v.stored), v.author, v.message)
            for v in versions]
    table = Table(box=None)
    cols = ("ref", "content id", "created", "size", "new", "author", "message")
    for i, col in enumerate(cols):  # every column keeps its width; only the message is cut
        fixed = col != "message"
        width = max([len(col)] + [len(r[i]) for r in rows]) if fixed else None
        table.add_column(col, justify="right" if col in ("size", "new") else "left", no_wrap=True,
                         min_width=width, overflow="ellipsis")
    for r in rows:
        table.add_row(*(Text(x) for x in r))  # user text, not rich markup
    _console().print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="REF: MODEL, MODEL@N, MODEL@TAG, content-id prefix, or a model file.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Metadata, tensors and lineage of one version (or of a model file)."""
    from rich.table import Table
    from rich.text import Text

    _refuse_ambiguous(ref)
    if Path(ref).exists() and not _looks_like_ref_in_store(ref):
        doc = _show_file(Path(ref))
    else:
        with _open() as s:
            doc = s.show(ref)
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    if "ref" in doc:
        con.print(f"[bold]{doc['ref']}[/bold]  content {doc['content_id']}")
        con.print(f"created {doc['created']} by {doc['author']}  format {doc['format']}")
        con.print(f"size {_size(doc['size'])} ({_size(doc['stored'])} new)  params {doc['params']:,}  "
                  f"tensors {doc['n_tensors']}  dtype {doc['dtype']}")
        if doc["message"]:
            print(f"message: {doc['message']}")
        con.print(f"parents: {', '.join(doc['parents']) or '-'}   children: {', '.join(doc['children']) or '-'}")
        for k, v in doc["meta"].items():
            print(f"  {k} = {v}")  # user text: not rich markup
        for ds, ms in doc["metrics"].items():
            print(f"  {ds}: " + "  ".join(f"{k}={v:g}" for k, v in ms.items()))
        if doc["tags"]:
            print(f"tags: {', '.join(doc['tags'])}")
        for c in doc["comments"]:
            print(f"  {c['created']} {c['author']}: {c['text']}")
    else:
        con.print(f"[bold]{doc['path']}[/bold]  format {doc['format']}  size {_size(doc['size'])}  "
                  f"params {doc['params']:,}  tensors {len(doc['tensors'])}")
    table = Table(box=None)
    for col in ("tensor", "dtype", "shape", "bytes"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    for t in doc["tensors"]:
        table.add_row(Text(t["name"]), t["dtype"], str(tuple(t["shape"])), _size(t["bytes"]))
    con.print(table)


def _looks_like_ref_in_store(ref: str) -> bool:
    return "@" in ref and not Path(ref).suffix


def _refuse_ambiguous(arg: str) -> None:
    """Like git: a bare word naming both a path here and a model in the store is refused,
    rather than silently reading the path."""
    from modelstore.diff_inputs import _looks_like_path
    from modelstore.errors import InvalidInputError, ModelstoreError

    if "@" in arg or not os.path.exists(arg) or _looks_like_path(arg):
        return
    try:
        with _open() as s:
            s.resolve(arg)
    except ModelstoreError:  # no store here, or no such model: the path it is
        return
    raise InvalidInputError(f"{arg!r} is ambiguous: both a path here and a model in the store; "
                            f"write ./{arg} for the path or {arg}@latest for the model")


def _show_file(path: Path) -> dict:
    from modelstore.formats import open_model

    with open_model(path) as src:
        tensors = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes} for t in src.tensors]
        fmt, metadata, params = src.format, dict(src.metadata), src.params_of()
    return {"path": str(path), "format": fmt, "metadata": metadata, "tensors": tensors,
            "size": sum(t["bytes"] for t in tensors), "params": params}


@app.command()
def checkout(
    ref: Annotated[str, typer.Argument(help="REF of the version to write out.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (.safetensors, .npz, .pt, .onnx, .gguf, .h5, .keras).")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="safetensors | npz | pt | onnx | gguf | h5 | keras (default: from the suffix).")] = None,
):
    """Write a version to a model file, bit-exact."""
    with _open() as s:
        info = s.resolve(ref)
        s.checkout(info.ref, output, fmt=fmt)
    print(f"{info.ref} -> {output} ({_size(info.size)})")


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json")] = False):
    """Logical bytes, stored bytes, dedup and compression ratios."""
    with _open() as s:
        doc = s.stats()
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    con.print(f"models {doc['models']}  versions {doc['versions']}  chunks {doc['chunks']}")
    con.print(f"logical {_size(doc['logical_bytes'])}  unique {_size(doc['unique_bytes'])}  "
              f"stored {_size(doc['stored_bytes'])}  on disk {_size(doc['pack_bytes'] + doc['index_bytes'] + doc['catalog_bytes'])}")
    con.print(f"dedup {doc['dedup_ratio']:.2f}x  compression {doc['compression_ratio']:.2f}x  "
              f"stored/logical {doc['stored_over_logical']:.3f}")
    from rich.table import Table

    table = Table(box=None)
    for col in ("model", "encoding", "records", "raw", "stored", "stored/raw", "longest chain"):
        table.add_column(col, justify="left" if col in ("model", "encoding") else "right")
    rows = [("(all)", doc["encodings"], doc["longest_chain"])]
    rows += [(m, d.get("encodings", {}), d.get("longest_chain", 0)) for m, d in doc["per_model"].items()]
    for model, encs, longest in rows:
        for i, (enc, e) in enumerate(encs.items()):
            ratio = e["stored_bytes"] / e["raw_bytes"] if e["raw_bytes"] else 1.0
            table.add_row(model if i == 0 else "", enc, str(e["records"]), _size(e["raw_bytes"]),
                          _size(e["stored_bytes"]), f"{ratio:.3f}", str(longest) if i == 0 else "")
    con.print(table)


@app.command()
def fsck(
    quick: Annotated[bool, typer.Option("--quick", help="Check references only; do not re-hash chunk data.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Re-hash every chunk and check every reference; exit 1 on damage."""
    with _open() as s:
        doc = s.fsck(verify_data=not quick)
    if as_json:
        _emit_json(doc)
    else:
        for p in doc["problems"]:
            print(f"error: {p}")
        print(f"{doc['versions']} versions, {doc['chunks']} chunks, {doc['chunks_verified']} verified "
              f"({_size(doc['bytes_verified'])}); {doc['unreferenced_chunks']} unreferenced chunks "
              f"({_size(doc['unreferenced_bytes'])}), {doc['unreferenced_manifests']} unreferenced manifests")
        print("ok" if doc["ok"] else f"{len(doc['problems'])} problem(s) found")
    if not doc["ok"]:
        raise typer.Exit(1)


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be removed.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Remove chunks and manifests no version references; compact pack files."""
    from modelstore.gc import gc as run_gc

    with _open() as s:
        doc = run_gc(s, dry_run=dry_run)
    if as_json:
        _emit_json(doc)
    else:
        verb = "would remove" if dry_run else "removed"
        print(f"{verb} {doc['chunks_removed']} chunks and {doc['manifests_removed']} manifests; "
              f"{_size(doc['bytes_freed'])} freed")


@app.command()
def rm(ref: Annotated[str, typer.Argument(help="REF of the version to delete.")]):
    """Delete a version (its children keep their other ancestors); run `gc` to reclaim space."""
    with _open() as s:
        info = s.delete(ref)
    print(f"deleted {info.ref} ({info.content_id[:12]}); run `modelstore gc` to reclaim space")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json")] = False):
    """List models and their number of versions."""
    with _open() as s:
        rows = s.models()
    if as_json:
        _emit_json([{"model": m, "versions": n} for m, n in rows])
    else:
        for m, n in rows:
            print(f"{m}\t{n}")


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="Old side: REF (MODEL, MODEL@N, MODEL@TAG, content-id prefix) or a model file/folder.")],
    b: Annotated[str, typer.Argument(help="New side: REF or a model file/folder.")],
    layers: Annotated[bool, typer.Option("--layers", help="One row per layer block (name cut after its first numeric index, e.g. encoder.layer.3) instead of per tensor.")] = False,
    atol: Annotated[float, typer.Option("--atol", help="Elements with |a-b| <= atol + rtol*|b| count as unchanged.")] = 0.0,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance (see --atol).")] = 0.0,
    rank: Annotated[bool, typer.Option("--rank", help="Estimate the numerical rank of each modified 2-D delta (randomized; off by default for speed).")] = False,
    rank_budget: Annotated[float, typer.Option("--rank-budget", help="At most this many seconds on --rank; later tensors are skipped.")] = 60.0,
    limit: Annotated[int, typer.Option("--limit", help="Table rows to show (0 = all).")] = 50,
    no_align: Annotated[bool, typer.Option("--no-align", help="Pair tensors by name only (no detection of inserted/removed layers).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as one JSON document.")] = False,
    graph: Annotated[bool, typer.Option("--graph", help="Also diff the network graphs (ONNX): nodes added, removed, changed, edges rewired; both sides must carry one.")] = False,
):
    """What changed between two versions or model files: structure, then per-layer weights."""
    from modelstore.diff import diff_files, needs_store

    opts = dict(atol=atol, rtol=rtol, rank=rank, rank_budget=rank_budget, align=not no_align,
                graph=True if graph else None)
    prog, task = _progress(0, "diff")
    with prog:
        def progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        _refuse_ambiguous(a)
        _refuse_ambiguous(b)
        if needs_store(a, b):
            with _open() as s:
                d = s.diff(a, b, progress=progress, **opts)
        else:  # two existing files: no store is needed or opened
            d = diff_files(a, b, progress=progress, **opts)
    if as_json:
        _emit_json(d.to_dict())
        return
    from modelstore.diff_render import render

    render(d, _console(), layers=layers, limit=limit)
    if graph and d.graph is not None:
        from modelstore.graph_diff import render as render_graph

        render_graph(d.graph, _console(), limit=limit)


@app.command()
def demo():
    """Build a demo store (./.modelstore unless --store): digits models trained for real, then a tour.

    Three families trained in seconds on scikit-learn's digits, one version per epoch with metrics
    on clean and noisy validation sets, a fine-tune with lineage, tags and comments; the tour shows
    models, log, a query, a diff, stats, a bit-exact checkout and fsck. Re-running reuses what is there.
    """
    import tempfile

    from rich.text import Text

    from modelstore.config import DIRNAME, Layout
    from modelstore.demo import CLEAN, FINETUNE, NOISY, build
    from modelstore.formats import open_model
    from modelstore.store import Store

    target = _state["store"] or os.environ.get("MODELSTORE_DIR") or Path.cwd() / DIRNAME
    s = Store.open(target) if Layout(Path(target)).config.exists() else Store.init(target)
    con = _console()

    def say(text: str, style: str | None = None) -> None:  # plain text (no markup), never wrapped
        con.print(Text(text, style=style or ""), soft_wrap=True)

    with s:
        say(f"store {Path(target).resolve()}", "bold")
        versions = build(s, say=lambda line: say(f"  {line}"))
        say(f"  {len(versions)} versions of {len({v.model for v in versions})} models")

        say("\n$ modelstore models", "bold")
        for model, n in s.models():
            best = s.resolve(f"{model}@best") if any(t["tag"] == "best" for t in s.tags(model)) else None
            acc = (f"best {best.ref}: accuracy {best.metrics.get(CLEAN, {}).get('accuracy', 0):.3f} clean, "
                   f"{best.metrics.get(NOISY, {}).get('accuracy', 0):.3f} noisy" if best else "")
            say(f"  {model:24s} {n:3d} versions  {acc}")

        say(f"\n$ modelstore log {FINETUNE.model}", "bold")
        for v in s.log(FINETUNE.model):
            say(f"  {v.ref:22s} {v.content_id[:12]}  {_size(v.size):>9s}  {_size(v.stored):>9s} new  "
                f"parent {','.join(v.parents) or '-':24s} {v.message}")

        q = ('task = "image-classification" and dataset = "digits" and accuracy > 90% and cpu_ghz <= 1GHz '
             'order by accuracy desc limit 5')
        say(f"\n$ modelstore query '{q}'", "bold")
        for v in s.query(q):
            say(f"  {v.ref:22s} accuracy {v.metrics[CLEAN]['accuracy']:.3f} clean, "
                f"{v.metrics[NOISY]['accuracy']:.3f} noisy  cpu_ghz {v.meta.get('cpu_ghz')}")

        ft = s.resolve(f"{FINETUNE.model}@1")
        say(f"\n$ modelstore diff {ft.parents[0]} {FINETUNE.model}@production", "bold")
        d = s.diff(ft.parents[0], f"{FINETUNE.model}@production").to_dict()
        say(f"  {d['summary']['identical']} tensors identical (frozen, stored once), {d['summary']['modified']} "
            f"modified: relative L2 change {d['summary']['rel_l2']:.3f}")
        for t in d["tensors"]:
            say(f"  {t['name']:18s} {t['status']:10s} rel_l2 {t['rel_l2']:.4f}")

        st = s.stats()
        say("\n$ modelstore stats", "bold")
        say(f"  {st['models']} models, {st['versions']} versions: logical {_size(st['logical_bytes'])}, "
            f"stored {_size(st['stored_bytes'])}: dedup {st['dedup_ratio']:.2f}x, "
            f"compression {st['compression_ratio']:.2f}x, stored/logical {st['stored_over_logical']:.3f}")

        ref = f"{FINETUNE.model}@production"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "checkout.safetensors"
            s.checkout(ref, out)
            back = s.load(ref)
            with open_model(out) as src:  # the file holds exactly the stored bytes
                same = (len(src.tensors) == len(back)
                        and all(bytes(t.buffer()) == back[t.name].tobytes() for t in src.tensors))
            say(f"\n$ modelstore checkout {ref} -o checkout.safetensors", "bold")
            say(f"  {len(back)} tensors, {_size(out.stat().st_size)} written, {'bit-exact' if same else 'MISMATCH'}")
            if not same:
                raise typer.Exit(1)
        rep = s.fsck()
        say("\n$ modelstore fsck", "bold")
        say(f"  {rep['chunks_verified']} chunks re-hashed: {'ok' if rep['ok'] else 'PROBLEMS'}")
        if not rep["ok"]:
            raise typer.Exit(1)
    serve = f"modelstore --store {_state['store']} serve" if _state["store"] else "modelstore serve"
    say(f"\nnext: run `{serve}`, then open http://127.0.0.1:8000", "bold")

# -- catalog: query, metadata, metrics, tags, comments, lineage (docs/QUERY.md) ----------------
meta_app = typer.Typer(help="Metadata of a version: set, unset, history.", no_args_is_help=True)
metric_app = typer.Typer(help="Metrics of a version per validation dataset: add, history.", no_args_is_help=True)
app.add_typer(meta_app, name="meta")
app.add_typer(metric_app, name="metric")

_AUTHOR = typer.Option(help="Author (default: $MODELSTORE_AUTHOR or the user name).")


@app.command()
def query(
    expr: Annotated[str, typer.Argument(help='Query, e.g. \'task = "object-detection" and accuracy > 90% order by accuracy desc limit 10\' (docs/QUERY.md).')],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {ref, model, version, content_id, attributes, metrics}.")] = False,
):
    """Find versions by metadata and metrics."""
    from rich.table import Table
    from rich.text import Text

    from modelstore.query import table

    with _open() as s:
        result = s.query_result(expr)
    if as_json:
        _emit_json([v.to_query_json() for v in result.versions])
        return
    headers, rows = table(result)
    t = Table(box=None)
    for h in headers:
        t.add_column(Text(h))
    for r in rows:
        t.add_row(*(Text(c) for c in r))  # user text, not rich markup
    _console().print(t)
    _console(stderr=True).print(f"{len(rows)} version(s)")


@meta_app.command("set")
def meta_set(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    values: Annotated[list[str], typer.Argument(help="KEY=VALUE ... (typed: 1.0 number, true bool, 2026-01-02 time, else string).")],
    author: Annotated[Optional[str], _AUTHOR] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Set metadata of a version (its content id does not change; old values stay in the history)."""
    with _open() as s:
        info = s.set_meta(ref, _parse_kv(values, "metadata"), author=author)
    if as_json:
        _emit_json(info.to_dict())
    else:
        print(f"{info.ref}: " + "  ".join(f"{k}={v}" for k, v in info.meta.items()))


@meta_app.command("unset")
def meta_unset(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    keys: Annotated[list[str], typer.Argument(help="KEY ...")],
    author: Annotated[Optional[str], _AUTHOR] = None,
):
    """Remove metadata keys of a version (their values stay in the history)."""
    with _open() as s:
        info = s.unset_meta(ref, keys, author=author)
    print(f"{info.ref}: removed {', '.join(keys)}")


@meta_app.command("history")
def meta_history(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    key: Annotated[Optional[str], typer.Argument(help="Only this key.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Every value the version's metadata had, oldest first."""
    with _open() as s:
        rows = s.meta_history(ref, key)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        until = f"until {r['replaced_at']} ({r['replaced_by']})" if r["replaced_at"] else "current"
        print(f"{r['key']} = {r['value']}\tset {r['set_at']} by {r['author']}\t{until}")


@metric_app.command("add")
def metric_add(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    values: Annotated[list[str], typer.Argument(help="NAME=VALUE ... (numbers; 93% means 0.93).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Validation dataset, e.g. imagenet-val.")],
    author: Annotated[Optional[str], _AUTHOR] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Record metrics of a version on a validation dataset (a re-evaluation keeps the history)."""
    with _open() as s:
        info = s.add_metrics(ref, dataset, values, author=author)
    if as_json:
        _emit_json(info.to_dict())
    else:
        print(f"{info.ref} {dataset}: " + "  ".join(f"{k}={v:g}" for k, v in info.metrics[dataset].items()))


@metric_app.command("history")
def metric_history(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset")] = None,
    name: Annotated[Optional[str], typer.Option("--name")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Every value recorded for the version's metrics, oldest first."""
    with _open() as s:
        rows = s.metric_history(ref, dataset, name)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        print(f"{r['dataset']}\t{r['name']} = {r['value']:g}\t{r['recorded']} by {r['author']}"
              + ("" if r["latest"] else "\t(replaced)"))


@app.command()
def tag(
    ref: Annotated[str, typer.Argument(help="REF of the version to tag (with --delete: any REF of the model).")],
    name: Annotated[str, typer.Argument(help="Tag name, e.g. production; MODEL@NAME then resolves.")],
    delete: Annotated[bool, typer.Option("--delete", help="Delete the tag.")] = False,
    author: Annotated[Optional[str], _AUTHOR] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Tag a version (a tag moves when re-tagged), or delete a tag."""
    with _open() as s:
        doc = s.tag(ref, name, delete=delete, author=author)
    if as_json:
        _emit_json(doc)
    elif delete:
        print(f"deleted {doc['model']}@{doc['tag']} (was {doc['was']})")
    else:
        moved = f" (moved from {doc['previous']})" if doc["previous"] and doc["previous"] != doc["ref"] else ""
        print(f"{doc['model']}@{doc['tag']} -> {doc['ref']}{moved}")


@app.command()
def tags(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default: every model).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """List tags."""
    with _open() as s:
        rows = s.tags(model)
    if as_json:
        _emit_json(rows)
    else:
        for r in rows:
            print(f"{r['model']}@{r['tag']}\t{r['ref']}\t{r['created']} by {r['author']}")


@app.command()
def comment(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    text: Annotated[str, typer.Argument(help="The comment (at most 10,000 characters).")],
    author: Annotated[Optional[str], _AUTHOR] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Comment on a version (shown by `show`)."""
    with _open() as s:
        doc = s.comment(ref, text, author=author)
    if as_json:
        _emit_json(doc)
    else:
        print(f"{doc['ref']}: comment #{doc['id']} by {doc['author']} at {doc['created']}")


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="REF of the version.")],
    depth: Annotated[Optional[int], typer.Option("--depth", min=1, help="Walk at most this many generations.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Ancestors (parents, their parents, ...) and descendants of a version."""
    with _open() as s:
        doc = s.lineage(ref, max_depth=depth)
    if as_json:
        _emit_json(doc)
        return
    print(f"{doc['ref']}  content {doc['content_id'][:12]}")
    for title, rows in (("ancestors", doc["ancestors"]), ("descendants", doc["descendants"])):
        print(f"{title}:" + ("" if rows else " -"))
        for r in rows:
            print(f"  {'  ' * (r['depth'] - 1)}{r['ref']}  {r['content_id'][:12]}  {r['created']}  {r['message']}")

# -- commands that live in their own modules (server, remotes, imports): each exposes
# register(app) and imports its heavy dependencies inside the commands.
for _ext in ("modelstore.cli_serve", "modelstore.cli_remote", "modelstore.cli_import"):
    import importlib.util as _ilu

    if _ilu.find_spec(_ext) is not None:
        __import__(_ext, fromlist=["register"]).register(app)


def main() -> None:
    """Console entry point: run the app, turning library errors into one stderr line."""
    from modelstore.errors import ModelstoreError

    try:
        app()
    except ModelstoreError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except OSError as exc:
        sys.stderr.write(f"error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}\n")
        sys.exit(1)
    except Exception as exc:  # a bug: one line unless debugging
        if os.environ.get("MODELSTORE_DEBUG"):
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} (set MODELSTORE_DEBUG=1 for a traceback)\n")
        sys.exit(4)
