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
    "Store", "VersionInfo", "diff_files", "ModelstoreError", "NotFoundError", "AlreadyExistsError", "InvalidInputError",
    "LockedError", "ReadOnlyError", "IntegrityError", "FormatError", "InternalError", "__version__",
]
