"""Paths and plain reads inside a folder tunesmith loads: relative paths that cannot leave it,
regular files only (no link, FIFO or device), bounded sizes.

Part of the trust boundary (:mod:`tunesmith.runs.trust` re-exports every name here).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from tunesmith.errors import ArtifactError
from tunesmith.runs.json_strict import UNTRUSTED_HINT as _UNTRUSTED_HINT
from tunesmith.runs.json_strict import _json_name

__all__ = ["MAX_PATH_CHARS", "open_regular", "read_limited", "safe_relative"]

MAX_PATH_CHARS = 1024
"""Longest relative path accepted from a file's field."""


def safe_relative(value: Any, *, file: str | os.PathLike[str], field: str) -> PurePosixPath:
    """``value`` as a relative path that cannot leave its folder, or an :class:`ArtifactError`.

    Refused: a non-string, an empty or over-long path, a NUL byte, an absolute path (POSIX
    or Windows, with a drive), a backslash, and any ``..`` component.
    """
    where = f"field {field!r}"
    if not isinstance(value, str):
        raise ArtifactError(f"{where} must be a relative path string, got {_json_name(value)}", path=file)
    if not value or len(value) > MAX_PATH_CHARS:
        raise ArtifactError(
            f"{where} must be a relative path of 1 to {MAX_PATH_CHARS} characters, got {len(value)}", path=file
        )
    shown = value if len(value) <= 80 else value[:77] + "..."
    if "\x00" in value or "\\" in value:
        raise ArtifactError(f"{where} holds a NUL or backslash: {shown!r}", path=file, hint=_UNTRUSTED_HINT)
    rel = PurePosixPath(value)
    if rel.is_absolute() or (len(value) > 1 and value[1] == ":"):
        raise ArtifactError(
            f"{where} is an absolute path {shown!r}; a folder may only name files inside itself",
            path=file,
            hint=_UNTRUSTED_HINT,
        )
    if any(part == ".." for part in rel.parts):
        raise ArtifactError(
            f"{where} leaves the folder through '..' ({shown!r}); a folder may only name files inside itself",
            path=file,
            hint=_UNTRUSTED_HINT,
        )
    return rel


def open_regular(path: Path, *, limit: int | None, shown: str) -> int:
    """A file descriptor of a regular file, never following a link and never blocking on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(f"{shown} is a symbolic link", path=path, hint=_UNTRUSTED_HINT) from None
        if exc.errno == errno.ENOENT:
            raise ArtifactError(f"{shown} is missing", path=path) from None
        raise ArtifactError(f"{shown} cannot be opened: {exc.strerror or exc}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(
                f"{shown} is not a regular file ({_kind_of(st.st_mode)})", path=path, hint=_UNTRUSTED_HINT
            )
        if limit is not None and st.st_size > limit:
            raise ArtifactError(
                f"{shown} is {st.st_size:,} bytes, over the {limit:,}-byte limit for this file",
                path=path,
                hint=_UNTRUSTED_HINT,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def read_limited(path: str | os.PathLike[str], *, limit: int, shown: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (no link, FIFO or device is opened)."""
    p = Path(path)
    fd = open_regular(p, limit=limit, shown=shown or p.name)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:  # the file grew while being read
        raise ArtifactError(f"{shown or p.name} is over the {limit:,}-byte limit", path=p)
    return data
