"""Names and values users give the catalog: validation, typing, canonical times.

Model names, attribute keys, metric and dataset names and tag names are checked here (one
clear InvalidInputError each); attribute values are typed as stored (docs/QUERY.md "Typed
values"); metric values are finite floats ('93%' is 0.93); times are canonical UTC ISO-8601
text, so that text order is time order. Nothing here touches the database.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal

from modelstore.errors import InvalidInputError

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MAX_NAME = 200
_HEX = re.compile(r"^[0-9a-f]{8,32}$")

# Names users give (docs/QUERY.md "Names").
META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
METRIC_NAME = META_KEY
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")
TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,99}$")
MAX_META_VALUE = 10_000
MAX_COMMENT = 10_000

# Built-in attributes (computed at commit; a user attribute cannot take these names).
BUILTINS = ("params", "size", "stored", "dtype", "tensors", "format", "created", "author", "model",
            "version", "message", "parent", "tag", "content_id")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInputError("model name is empty")
    if len(name) > MAX_NAME:
        raise InvalidInputError(f"model name is {len(name)} characters long (at most {MAX_NAME})")
    if not MODEL_NAME.match(name) or ".." in name:
        raise InvalidInputError(
            f"invalid model name {name[:60]!r}: use letters, digits, '.', '_', '-' (and one '/' as in org/name)"
        )
    return name


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- typed values ------------------------------------------------------------------------
# A value is stored as (type, num, text): 'i' integer and 'f' float (num), 'b' bool (num 0/1),
# 't' timestamp (num = seconds since the epoch, shown as UTC ISO-8601), 's' string (text).
# `text` is set for strings only and `num` for everything else, so an index on (key, text) holds
# exactly the string values and one on (key, num) the numeric ones.
_INT = re.compile(r"^[+-]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
                   r"(?:Z|[+-][0-9]{2}:[0-9]{2})?$")
MAX_EXACT_INT = 2**53
_MAYBE_TYPED = frozenset("0123456789+-.tTfF")  # first characters of numbers, dates, true, false


def iso_utc(dt: datetime) -> str:
    """Canonical form of a timestamp: UTC, 'YYYY-MM-DDTHH:MM:SS[.ffffff]Z'."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
            + (f".{dt.microsecond:06d}" if dt.microsecond else "") + "Z")


def parse_time(text: str) -> datetime | None:
    """An ISO-8601 date or date-time (naive = UTC), or None."""
    if not _TIME.match(text):
        return None
    try:
        dt = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return dt


def created_iso(value) -> str | None:
    """A version's `created`: canonical UTC ISO-8601 to the second (so text order is time order)."""
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else parse_time(str(value))
    if dt is None:
        raise InvalidInputError(f"created {str(value)[:60]!r} is not an ISO-8601 timestamp")
    return iso_utc(dt.replace(microsecond=0))


def type_value(value) -> tuple[str, float | None, str | None]:  # one rule per type
    """Type a metadata value: bool, number, timestamp or string (docs/QUERY.md "Typed values").

    Strings (as given on the command line) are typed by their form: `true`/`false` (any case)
    are bools, a decimal number is an int or a float, an ISO-8601 date or date-time is a
    timestamp, anything else stays a string. Python values keep their type.
    """
    cls = value.__class__
    if cls is float and math.isfinite(value):
        return ("f", value, None)
    if cls is str and len(value) <= 64 and value.isascii() and (not value or value[0] not in _MAYBE_TYPED) \
            and "\x00" not in value:
        return ("s", None, value)  # the common case, decided without regexes
    if cls is str and len(value) >= 10 and value[4:5] == "-" and value[:4].isdigit():
        dt = parse_time(value)  # dates go straight to the date rule (a number has no '-' there)
        if dt is not None:
            return ("t", dt.timestamp(), None)
    if isinstance(value, bool):
        return ("b", 1.0 if value else 0.0, None)
    if isinstance(value, int):
        if abs(value) <= MAX_EXACT_INT:
            return ("i", float(value), None)
        return _check_text(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"metadata value {value!r} is not a finite number")
        return ("f", value, None)
    if isinstance(value, datetime):
        return ("t", (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp(), None)
    text = _check_text(value if isinstance(value, str) else str(value))[2]
    if not text or text[0] not in _MAYBE_TYPED:
        return ("s", None, text)
    if text[0] in "tTfF":
        low = text.lower()
        if low in ("true", "false"):
            return ("b", 1.0 if low == "true" else 0.0, None)
        return ("s", None, text)
    if _INT.match(text):
        n = int(text)
        if abs(n) <= MAX_EXACT_INT:
            return ("i", float(n), None)
        return ("s", None, text)
    if _FLOAT.match(text) and any(c.isdigit() for c in text):
        f = float(text)
        if math.isfinite(f):
            return ("f", f, None)
        return ("s", None, text)
    dt = parse_time(text)
    if dt is not None:
        return ("t", dt.timestamp(), None)
    return ("s", None, text)


def check_text(text: str, what: str, limit: int) -> str:
    """User text stored in the catalog (metadata values, comments): bounded, no NUL, UTF-8."""
    if len(text) > limit:
        raise InvalidInputError(f"{what} is longer than {limit} characters (this one has {len(text)})")
    if "\x00" in text:
        raise InvalidInputError(f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid UTF-8 text") from None
    return text


def _check_text(text: str) -> tuple[str, None, str]:
    return ("s", None, check_text(text, "metadata value", MAX_META_VALUE))


def typed(type_: str, num, text):
    """The Python value of a stored (type, num, text)."""
    if type_ == "s":
        return text
    if type_ == "i":
        return int(num)
    if type_ == "f":
        return float(num)
    if type_ == "b":
        return bool(num)
    if type_ == "t":
        return iso_utc(datetime.fromtimestamp(num, UTC))
    return text if text is not None else num


_VALID_NAMES: dict[str, set] = {"key": set(), "dataset": set(), "metric": set(), "model": set()}  # memo (bulk)
_CANONICAL_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


def _valid_canonical(text: str) -> bool:
    try:
        datetime.fromisoformat(text[:-1])
        return True
    except ValueError:
        return False


def _seen(kind: str, name) -> bool:
    return name in _VALID_NAMES[kind]


def _remember(kind: str, name: str) -> None:
    memo = _VALID_NAMES[kind]
    if len(memo) > 100_000:
        memo.clear()
    memo.add(name)


def check_meta_key(key, *, builtin_ok: bool = True) -> str:
    if builtin_ok and key.__class__ is str and key in _VALID_NAMES["key"]:
        return key
    if not isinstance(key, str) or not META_KEY.match(key):
        raise InvalidInputError(
            f"invalid metadata key {str(key)[:60]!r}: letters, digits, '_', '.', '-'; starting with a letter or '_'")
    if not builtin_ok and key in BUILTINS:
        raise InvalidInputError(f"{key!r} is a built-in attribute computed at commit; choose another key")
    _remember("key", key)
    return key


def check_dataset(name) -> str:
    if name.__class__ is str and name in _VALID_NAMES["dataset"]:
        return name
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise InvalidInputError(
            f"invalid dataset name {str(name)[:60]!r}: letters, digits, '_', '.', '/', '-'; starting with a letter or digit")
    _remember("dataset", name)
    return name


def check_metric_name(name) -> str:
    if name.__class__ is str and name in _VALID_NAMES["metric"]:
        return name
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise InvalidInputError(
            f"invalid metric name {str(name)[:60]!r}: letters, digits, '_', '.', '-'; starting with a letter or '_'")
    _remember("metric", name)
    return name


def scaled(text: str, factor: Decimal) -> float:
    """float(text × factor), correctly rounded (so '93%' and 0.93 are the same double)."""
    try:
        return float(Decimal(text) * factor)
    except (ArithmeticError, ValueError):
        raise InvalidInputError(f"{text[:60]!r} is not a number") from None


def metric_value(value, name: str = "metric") -> float:
    """A metric value: a finite number (a string may end in '%': '93%' is 0.93)."""
    cls = value.__class__
    if cls is float:
        f = value
    elif cls is bool:
        raise InvalidInputError(f"metric {name} = {value!r} is not a number")
    elif isinstance(value, (int, float)):
        f = float(value)
    else:
        text = str(value).strip()
        percent = text.endswith("%")
        if percent:
            text = text[:-1]
        if not _FLOAT.match(text) or not any(c.isdigit() for c in text):
            raise InvalidInputError(f"metric {name} = {str(value)[:60]!r} is not a number")
        f = scaled(text, Decimal(1) / 100) if percent else float(text)
    if not math.isfinite(f):
        raise InvalidInputError(f"metric {name} = {value!r} is not a finite number")
    return f


def check_metrics(metrics) -> list[tuple[str, str, float]]:
    """[(dataset, name, value)] validated; a later duplicate (dataset, name) wins."""
    out: dict[tuple[str, str], float] = {}
    datasets, names = _VALID_NAMES["dataset"], _VALID_NAMES["metric"]
    for item in metrics or ():
        try:
            dataset, name, value = item
        except (TypeError, ValueError):
            raise InvalidInputError(f"a metric is (dataset, name, value), not {item!r}") from None
        if dataset.__class__ is not str or dataset not in datasets:
            check_dataset(dataset)
        if name.__class__ is not str or name not in names:
            check_metric_name(name)
        out[(dataset, name)] = value if value.__class__ is float and math.isfinite(value) else metric_value(value, name)
    return [(d, n, v) for (d, n), v in out.items()]
