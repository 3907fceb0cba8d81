"""modelstore: a database for model versions (git + GitHub for weights)."""

from modelstore.errors import (
    AlreadyExistsError,
    FormatError,
    IntegrityError,
    InternalError,
    InvalidInputError,
    LockedError,
    ModelstoreError,
    NotFoundError,
    ReadOnlyError,
)

__version__ = "0.1.0"

# Eager (cheap: no heavy imports) so that importing the modelstore.track module cannot shadow it.
from modelstore.track import track  # noqa: E402


def __getattr__(name):
    # Lazy: `import modelstore` stays cheap for the CLI's --version.
    if name == "Store":
        from modelstore.store import Store

        return Store
    if name == "diff_files":
        from modelstore.diff import diff_files

        return diff_files
    if name == "VersionInfo":
        from modelstore.catalog import VersionInfo

        return VersionInfo
    raise AttributeError(name)


__all__ = [
    "Store", "VersionInfo", "diff_files", "track", "ModelstoreError", "NotFoundError", "AlreadyExistsError", "InvalidInputError",
    "LockedError", "ReadOnlyError", "IntegrityError", "FormatError", "InternalError", "__version__",
]
