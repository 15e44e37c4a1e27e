"""Strict JSON for files tunesmith loads: finite numbers only, typed field access, one error line.

Part of the trust boundary (:mod:`tunesmith.runs.trust` re-exports every name here).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from tunesmith.errors import ArtifactError

__all__ = ["UNTRUSTED_HINT", "field", "malformed", "parse_json"]

UNTRUSTED_HINT = "Only load folders written by tunesmith; ask whoever sent it to re-save it"
_UNTRUSTED_HINT = UNTRUSTED_HINT


class _NonFinite(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text[:40])
    return value


def parse_json(data: bytes, *, path: str | os.PathLike[str], shown: str) -> Any:
    """JSON from bytes; a malformed file is an :class:`ArtifactError` with the line and column.

    Strict JSON only: ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``) are
    refused, since range checks on such values pass silently (every comparison with NaN is false).
    """
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise ArtifactError(
            f"{shown} holds the non-finite number {exc.args[0]}; JSON numbers must be finite", path=path
        ) from None
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{shown} is not UTF-8 text (byte {exc.start})", path=path) from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{shown} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=path
        ) from None
    except RecursionError:
        raise ArtifactError(f"{shown} nests too deeply to be a tunesmith file", path=path) from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ArtifactError(f"{shown} is not valid JSON: {str(exc)[:120]}", path=path) from None


def _json_type(t: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in types)


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    return _json_type(type(value)) if type(value) in (dict, list, str, int, float, bool) else type(value).__name__


# --- typed fields --------------------------------------------------------------------------------

_MISSING = object()


def field(
    data: Any,
    name: str,
    types: type | tuple[type, ...],
    *,
    file: str | os.PathLike[str],
    default: Any = _MISSING,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """``data[name]`` checked to be of ``types`` (and within ``[low, high]`` or ``choices``).

    ``name`` may be dotted (``"backbone.hidden_size"``). A missing field returns ``default``
    when one is given; otherwise, like any wrong type or value, it is an
    :class:`ArtifactError` naming the file and the field. Booleans never pass as numbers.
    """
    node = data
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            where = ".".join(parts[:i]) or "the top level"
            raise ArtifactError(f"field {where!r} must be a JSON object, got {_json_name(node)}", path=file)
        if part not in node:
            if default is not _MISSING:
                return default
            raise ArtifactError(f"field {name!r} is missing", path=file, hint=_UNTRUSTED_HINT)
        node = node[part]
    wanted = types if isinstance(types, tuple) else (types,)
    if float in wanted and int not in wanted:
        wanted = (*wanted, int)
    ok = isinstance(node, wanted) and not (isinstance(node, bool) and bool not in wanted)
    if not ok:
        if node is None and default is not _MISSING and type(None) not in wanted:
            return default
        raise ArtifactError(f"field {name!r} must be {_json_type(types)}, got {_json_name(node)}", path=file)
    if choices is not None and node not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ArtifactError(f"field {name!r} must be one of {allowed}, got {node!r}", path=file)
    numeric = isinstance(node, (int, float)) and not isinstance(node, bool)
    if numeric and ((low is not None and node < low) or (high is not None and node > high)):
        raise ArtifactError(f"field {name!r} must be within [{low}, {high}], got {node!r}", path=file)
    return node


@contextlib.contextmanager
def malformed(file: str | os.PathLike[str], what: str = "this file") -> Iterator[None]:
    """Turn a malformed value met while reading ``file`` into one :class:`ArtifactError` line.

    A safety net around code that reads a file's fields: a missing key, a wrong type or a bad
    value deep in a loader is reported as the file being malformed, never as a traceback.
    """
    try:
        yield
    except ArtifactError:
        raise
    except KeyError as exc:
        raise ArtifactError(f"{what} lacks the field {exc.args[0]!r}", path=file, hint=_UNTRUSTED_HINT) from None
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(f"{what} is malformed: {first}", path=file, hint=_UNTRUSTED_HINT) from None
