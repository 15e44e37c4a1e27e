"""The memory guard of :func:`~tunesmith.data.io.read_table`: a file whose reading would need
more than 80% of the available memory (cgroup limits included) is refused before it is read.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from tunesmith.data.io_formats import _CHUNK, Compression, _open_binary, _read_errors
from tunesmith.errors import DataError

# Memory guard: peak bytes while reading, per byte of (uncompressed) data, measured on review
# tables (short texts, a label, numbers) with this module's readers: CSV ~6x, JSONL ~8x, and
# Parquet ~4.5x its uncompressed column data. A file whose estimate exceeds this share of the
# available memory is refused before reading.
_TEXT_EXPANSION = {"csv": 6.5, "tsv": 6.5, "jsonl": 8.5, "json": 8.5}


_PARQUET_EXPANSION = 4.5


_UNKNOWN_COMPRESSION_RATIO = 6.0  # bz2/xz do not record the uncompressed size cheaply


_MEMORY_FRACTION = 0.8


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (containers), or None without a limit."""
    for limit_file, usage_file, stat_file, inactive_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 1 << 60:  # "max", or the "no limit" sentinel
            continue
        inactive = 0  # page cache the kernel can drop counts as free
        try:
            for line in Path(stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key and value.strip().isdigit():
                    inactive = int(value)
        except OSError:
            pass
        return max(limit - usage + inactive, 0)
    return None


def _available_memory() -> int | None:
    """Bytes of memory available to this process, or None when it cannot be told.

    psutil when installed, else ``MemAvailable`` from ``/proc/meminfo``, else ``os.sysconf``;
    capped by a cgroup (container) memory limit. Tests monkeypatch this function.
    """
    found: list[int] = []
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except Exception:
        pass
    if not found:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
        except (OSError, ValueError, IndexError):
            pass
    if not found:
        with suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(headroom)
    return min(found) if found else None


def _uncompressed_size(path: Path, compression: Compression | None, size: int) -> int:
    if compression is None:
        return size
    if compression == "gzip" and size >= 18:
        # The gzip trailer holds the uncompressed size modulo 4 GiB (of the last member only).
        # gzip adds at most a header and ~0.01% to data it cannot compress, so a value well
        # below the compressed size has wrapped around.
        with path.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        while isize + 65536 < 0.999 * size:
            isize += 1 << 32
        return isize
    return int(size * _UNKNOWN_COMPRESSION_RATIO)


def _memory_estimate(path: Path, fmt: str, compression: Compression | None) -> tuple[int, int, int]:
    """(bytes on disk, bytes of data once decompressed, estimated peak bytes to read it)."""
    size = path.stat().st_size
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        data = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        cells = meta.num_rows * meta.num_columns
        return size, data, int(size + _PARQUET_EXPANSION * data + 8 * cells)
    data = _uncompressed_size(path, compression, size)
    extra = size if compression is not None else 0
    return size, data, int(extra + _TEXT_EXPANSION[fmt] * data)


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _decompressed_more_than(path: Path, compression: Compression, limit: int) -> bool:
    """True when ``path`` decompresses to more than ``limit`` bytes; reads no further than that."""
    total = 0
    with _read_errors(path, compression), _open_binary(path, compression) as f:
        while chunk := f.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                return True
    return False


def _check_memory(path: Path, fmt: str, compression: Compression | None) -> None:
    """Refuse a file whose reading would need more memory than there is, before reading it."""
    available = _available_memory()
    if available is None:
        return
    try:
        size, data, need = _memory_estimate(path, fmt, compression)
    except Exception:
        return  # an unreadable file is reported by the reader itself
    allowed = _MEMORY_FRACTION * available
    if need <= allowed:
        return
    if compression is not None:
        # The uncompressed size was a guess (and a truncated gzip's trailer is garbage): count it,
        # streaming, but only as far as what fits - a refused file is never decompressed whole.
        fits = max(int((allowed - size) / _TEXT_EXPANSION[fmt]), 0)
        if not _decompressed_more_than(path, compression, fits):
            return
        data = max(data, fits)
        need = max(need, int(size + _TEXT_EXPANSION[fmt] * data))
    on_disk = _human(size) + (f" ({_human(data)} uncompressed)" if data != size else "")
    raise DataError(
        f"the file is too large to read into memory: {on_disk}, about {_human(need)} while reading, "
        f"but only {_human(available)} of memory is available",
        file=path,
        hint="Read a sample with read_table(path, max_rows=N), split it into smaller files, keep only the "
        "columns you need (Parquet reads a fraction of the memory of CSV), or use a machine with more memory",
    )
