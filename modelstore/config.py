"""Store location and `config.json`: format version gate, hash algorithm, chunk size.

A reader refuses a store whose format version or extensions it does not implement
(docs/FORMAT.md §3.1), rather than misreading it.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelstore import chunking, hashing
from modelstore.errors import AlreadyExistsError, FormatError, NotFoundError

FORMAT_VERSION = 1
DIRNAME = ".modelstore"
# Extensions: features a reader must implement to read a store that has the key. A store
# gets "xor-planes-2" (xor-planes plane methods 4 and 5, docs/FORMAT.md §5) when created,
# or when an older store takes its first commit from a writer that may emit them.
XOR_PLANES_2 = "xor-planes-2"
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({XOR_PLANES_2})


@dataclass
class Config:
    format_version: int = FORMAT_VERSION
    store_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    hash: str = hashing.ALGORITHM
    chunk_target_bytes: int = chunking.DEFAULT_TARGET
    # A new chunk may be stored as an XOR delta against an earlier version's chunk (a
    # skip-delta ladder, commit._delta_bases); a chain holds at most this many deltas
    # before a plain record starts the next one (0 disables deltas), so a read decodes at
    # most delta_depth + 1 records. The ladder chains popcount(g) links for version g, so
    # 5 stores the first 63 versions without a plain restart (0.435 of raw on the
    # 50-step fp32 series vs 0.452 with 4; larger values only lengthen the longest
    # chain); see benchmarks/bench_series.py.
    delta_depth: int = 5
    extensions: dict = field(default_factory=lambda: {XOR_PLANES_2: 1})
    # Remotes of this store (`modelstore remote add`): name -> {"url": ..., "token": ...}.
    # Not part of the format: a store without the key has no remotes.
    remotes: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


class Layout:
    """Paths inside a store directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.index = self.root / "index"
        self.packs = self.root / "packs"
        self.catalog = self.root / "catalog.sqlite"
        self.lock = self.root / "lock"
        self.tmp = self.root / "tmp"


def write_new(root: Path, chunk_target_bytes: int | None = None, delta_depth: int | None = None) -> Config:
    layout = Layout(root)
    if layout.config.exists():
        raise AlreadyExistsError(f"a store already exists at {root}")
    cfg = Config()
    if chunk_target_bytes:
        cfg.chunk_target_bytes = int(chunk_target_bytes)
    if delta_depth is not None:
        cfg.delta_depth = max(0, int(delta_depth))
    for d in (layout.root, layout.index, layout.packs, layout.tmp):
        d.mkdir(parents=True, exist_ok=True)
    layout.lock.touch()
    tmp = layout.root / "config.json.tmp"
    tmp.write_text(cfg.to_json())
    os.replace(tmp, layout.config)
    return cfg


def read(root: Path) -> Config:
    path = Layout(root).config
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFoundError(f"no modelstore at {root} (run `modelstore init`)") from None
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} is not a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"store format version {version!r} is not supported by this modelstore "
            f"(reads version {FORMAT_VERSION}); upgrade modelstore"
        )
    if data.get("hash") != hashing.ALGORITHM:
        raise FormatError(f"store uses hash {data.get('hash')!r}; this modelstore only knows {hashing.ALGORITHM}")
    unknown = set(data.get("extensions") or {}) - SUPPORTED_EXTENSIONS
    if unknown:
        raise FormatError(f"store uses extensions this modelstore does not implement: {', '.join(sorted(unknown))}")
    return Config(
        format_version=version,
        store_id=str(data.get("store_id", "")),
        hash=data["hash"],
        chunk_target_bytes=int(data.get("chunk_target_bytes", chunking.DEFAULT_TARGET)),
        delta_depth=int(data.get("delta_depth", Config.delta_depth)),
        extensions=dict(data.get("extensions") or {}),
        remotes=dict(data.get("remotes") or {}) if isinstance(data.get("remotes"), dict) else {},
    )


def write_remotes(root: Path, remotes: dict) -> None:
    """Replace the `remotes` key of config.json atomically, keeping every other key as is.

    The file then holds tokens, so it is written owner-readable only (0600)."""
    _rewrite(root, lambda data: data.__setitem__("remotes", remotes))


def add_extension(root: Path, name: str) -> None:
    """Record in config.json that the store now uses extension `name` (atomically, every
    other key kept): readers that do not implement it then refuse the store up front."""
    _rewrite(root, lambda data: data.setdefault("extensions", {}).__setitem__(name, 1))


def _rewrite(root: Path, change) -> None:
    path = Layout(root).config
    data = json.loads(path.read_text())
    change(data)
    tmp = path.with_name("config.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def locate(explicit: str | os.PathLike | None = None, cwd: Path | None = None) -> Path:
    """--store PATH, else $MODELSTORE_DIR, else the nearest .modelstore/ walking up (like git)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MODELSTORE_DIR")
    if env:
        return Path(env)
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / DIRNAME / "config.json").exists():
            return d / DIRNAME
    raise NotFoundError("no .modelstore found here or in any parent directory (run `modelstore init`, or pass --store PATH)")
