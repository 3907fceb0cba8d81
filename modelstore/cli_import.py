"""`modelstore import dir|mlflow`: bring in checkpoints from a folder or an MLflow registry.

register(app) adds the `import` group to the main Typer app (cli.py calls it). Errors are
ModelstoreError, printed by cli.main as one line; `--json` prints the importer's summary
(the new versions in the same shape as `commit --json`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import_app = typer.Typer(help="Import versions from a folder of checkpoints or an MLflow registry.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


def _print_versions(doc: dict) -> None:
    from modelstore.cli import _size

    for v in doc["versions"]:
        print(f"{v['ref']} {v['content_id'][:12]}  {_size(v['size'])} ({_size(v['stored'])} new)  {v['message']}")


@import_app.command("dir")
def import_dir_cmd(
    path: Annotated[Path, typer.Argument(help="Folder of checkpoints (.safetensors, .npz, .pt/.pth/.bin/.ckpt, HF checkpoint folders).")],
    model: Annotated[str, typer.Option("--model", help="Model name the versions are added to.")],
    parent: Annotated[str | None, typer.Option("--parent", help="Parent REF of the first version (default: the model's latest).")] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", help="Commit message (default: 'import FILE').")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata for every version (repeatable).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable checkpoints (listed) instead of importing nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the import summary as JSON.")] = False,
):
    """One version per checkpoint, in natural name order (epoch2 before epoch10), each the parent of the next.

    Re-running on the same folder imports only new or changed checkpoints (same file name and
    same weights as an earlier import into MODEL are skipped and counted as already imported).
    """
    from modelstore.cli import _emit_json, _open, _parse_kv, _size
    from modelstore.importers.dir import import_dir

    def progress(name: str, i: int, n: int) -> None:
        if sys.stderr.isatty() and not as_json:
            _note(f"[{i + 1}/{n}] {name}")

    with _open() as s:
        doc = import_dir(s, path, model=model, parent=parent, message=message, meta=_parse_kv(meta, "--meta"),
                         skip_bad=skip_bad, progress=progress)
    for sk in doc["skipped"]:
        _note(f"warning: skipped {sk['path']}: {sk['error']}")
    if as_json:
        _emit_json(doc)
        return
    _print_versions(doc)
    if doc["ignored"]:
        _note(f"ignored {len(doc['ignored'])} other entr{'y' if len(doc['ignored']) == 1 else 'ies'}: "
              + ", ".join(doc["ignored"][:10]) + (" ..." if len(doc["ignored"]) > 10 else ""))
    if doc["already_imported"]:
        _note(f"already imported {doc['already_imported']} unchanged checkpoint"
              f"{'' if doc['already_imported'] == 1 else 's'} (skipped): "
              + ", ".join(f"{a['path']} ({a['ref']})" for a in doc["already_imported_files"][:10])
              + (" ..." if doc["already_imported"] > 10 else ""))
    if not doc["versions"]:
        print(f"nothing new to import into {doc['model']}: {doc['already_imported']} checkpoint"
              f"{'' if doc['already_imported'] == 1 else 's'} already imported")
        return
    print(f"imported {len(doc['versions'])} versions of {doc['model']}: {_size(doc['raw_bytes'])} in "
          f"{doc['seconds']:.1f} s ({doc['mb_per_s']:.0f} MB/s), stored {_size(doc['stored_bytes'])} "
          f"({doc['stored_over_raw']:.3f} of raw); {doc['already_imported']} already imported")


@import_app.command("mlflow")
def import_mlflow_cmd(
    tracking_uri: Annotated[str, typer.Option("--tracking-uri", help="MLflow tracking/registry URI, e.g. sqlite:///mlflow.db or ./mlruns.")],
    model: Annotated[str | None, typer.Option("--model", help="Only this registered model (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the import summary as JSON.")] = False,
):
    """Registered model versions with their run's params (attributes) and metrics; weights from the artifacts."""
    from modelstore.cli import _emit_json, _open, _size
    from modelstore.importers.mlflow import import_mlflow

    def progress(what: str) -> None:
        if sys.stderr.isatty() and not as_json:
            _note(f"importing {what}")

    with _open() as s:
        doc = import_mlflow(s, tracking_uri, model=model, progress=progress)
    if as_json:
        _emit_json(doc)
        return
    for sk in doc["skipped"]:
        where = f"{sk['model']} v{sk['version']}" if sk.get("version") is not None else sk["model"]
        _note(f"note: {where}{': ' + sk['path'] if sk.get('path') else ''}: {sk['reason']}")
    _print_versions(doc)
    print(f"imported {len(doc['versions'])} versions from {len(doc['models'])} registered models "
          f"({doc['already_imported']} already imported): {_size(doc['raw_bytes'])}, stored {_size(doc['stored_bytes'])}")
