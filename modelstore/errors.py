"""The exception tree, grouped by what a caller does about an error.

    ModelstoreError                 exit 1 unless noted; `kind` is a stable, append-only code
    ├── NotFoundError (KeyError)    a REF, model, tensor or file that does not exist
    ├── AlreadyExistsError
    ├── InvalidInputError (ValueError)   bad file, dtype, name, query, metric value ...
    ├── LockedError                 another writer holds a lock the caller needs
    ├── ReadOnlyError
    ├── IntegrityError              stored bytes do not match their hash (exit 3)
    ├── FormatError                 a store or record this version cannot read (exit 3)
    ├── InternalError               a bug (exit 4)
    └── sync: ForgedChunkError (an IntegrityError, 400), MissingChunksError and
        MissingGraphError (InvalidInputError, 409), TagConflictError (409)

The CLI turns any ModelstoreError into one line on stderr and `exit_code`; the HTTP
server maps `kind` to `http_status`.
"""

from __future__ import annotations


class ModelstoreError(Exception):
    kind = "error"
    exit_code = 1
    http_status = 400

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else self.kind


class NotFoundError(ModelstoreError, KeyError):
    kind = "not_found"
    http_status = 404


class AlreadyExistsError(ModelstoreError):
    kind = "already_exists"
    http_status = 409


class InvalidInputError(ModelstoreError, ValueError):
    kind = "invalid_input"
    http_status = 400


class LockedError(ModelstoreError):
    kind = "locked"
    http_status = 423


class ReadOnlyError(ModelstoreError):
    kind = "read_only"
    http_status = 403


class IntegrityError(ModelstoreError):
    kind = "integrity"
    exit_code = 3
    http_status = 500


class FormatError(ModelstoreError):
    kind = "format"
    exit_code = 3
    http_status = 500


class InternalError(ModelstoreError):
    kind = "internal"
    exit_code = 4
    http_status = 500


# -- sync (push/pull between stores) --------------------------------------------------------
class ForgedChunkError(IntegrityError):
    """A received record does not decode to bytes hashing to its id: refused (sender's fault)."""

    http_status = 400


class MissingChunksError(InvalidInputError):
    """A version was offered before all of its chunks arrived."""

    kind = "missing_chunks"
    http_status = 409


class MissingGraphError(InvalidInputError):
    """A new version names a graph blob that was not sent and is not here."""

    kind = "missing_graph"
    http_status = 409


class TagConflictError(ModelstoreError):
    """A tag moved on both sides since the last sync (refused unless --force)."""

    kind = "tag_conflict"
    http_status = 409


ALL_ERRORS = (
    NotFoundError,
    AlreadyExistsError,
    InvalidInputError,
    LockedError,
    ReadOnlyError,
    IntegrityError,
    FormatError,
    InternalError,
    ForgedChunkError,
    MissingChunksError,
    MissingGraphError,
    TagConflictError,
)
