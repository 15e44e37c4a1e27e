"""Image inputs: class folders, path columns, decoding with Pillow and in-memory arrays.

Everything here turns user images into one format: a ``uint8`` array of shape
``(N, size, size, 3)`` (RGB, channels last). :func:`to_tensor` makes the float
``(N, 3, H, W)`` tensor in ``[0, 1]`` that models take, and :func:`normalize` applies a
backbone's mean and standard deviation.

Sources of images:

* :func:`read_image_folder` - one sub-folder per class (``root/cat/*.jpg``, ``root/dog/*.jpg``).
* A table (CSV, Parquet, JSONL read with :func:`tunesmith.data.io.read_table`) with a column
  of image paths relative to a root folder: :func:`resolve_image_paths`, which refuses paths
  that leave the root.
* :func:`decode_images` - reads files with Pillow, converts every mode to RGB, applies the EXIF
  orientation and resizes. Unreadable, truncated and oversized ("decompression bomb") files
  raise a :class:`~tunesmith.errors.DataError` naming the file and row, or are skipped and
  counted in a :class:`DecodeReport` with ``on_error="skip"``.
* :func:`images_from_array` - numpy arrays already in memory (such as MNIST's ``(N, 784)``).
* :func:`decode_image_bytes` - one encoded image, as carried base64-encoded in an HTTP request.

Decoding honours Pillow's global ``Image.MAX_IMAGE_PIXELS`` (raise it to accept larger
images) and ``ImageFile.LOAD_TRUNCATED_IMAGES`` (left ``False``, truncated files fail).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from tunesmith.errors import ConfigError, DataError
from tunesmith.progress import progress as progress_bar

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""File suffixes read as images (compared case-insensitively)."""

ResizeMode = Literal["crop", "squash"]
OnError = Literal["raise", "skip"]

_RESIZE_MODES = ("crop", "squash")
_ON_ERROR = ("raise", "skip")
_SKIP_HINT = 'Fix or remove the file, or pass on_error="skip" to leave unreadable images out'
_ARRAY_SHAPES = "(N, H, W), (N, H, W, 1), (N, H, W, 3), (N, 1, H, W), (N, 3, H, W) or (N, H*W) with H == W"
# Images resized at once by images_from_array: bounds the float copy's memory.
_ARRAY_CHUNK = 256


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- folders and paths


def read_image_folder(
    root: str | os.PathLike[str],
    *,
    label_column: str = "label",
    path_column: str = "path",
) -> pd.DataFrame:
    """List the images of a folder with one sub-folder per class.

    The class of an image is the name of the sub-folder of ``root`` it lies in; images are
    found recursively inside each class folder (symbolic links to folders are not followed).
    Classes and the files within them are sorted, so the result is the same on every machine.
    Hidden folders (names starting with ``.``) are passed over. Files without one of
    :data:`IMAGE_SUFFIXES`, and files directly in ``root``, are ignored; their number is in
    ``df.attrs["ignored_files"]``.

    Parameters
    ----------
    root:
        The folder holding the class folders.
    label_column, path_column:
        Names of the two columns of the result.

    Returns
    -------
    pandas.DataFrame
        Columns ``path_column`` (absolute path, ``str``) and ``label_column`` (class name), one
        row per image.

    Raises
    ------
    DataError
        ``root`` is missing or not a folder, holds no class folders or fewer than two, or a
        class folder holds no image.
    """
    if label_column == path_column:
        raise ConfigError("must differ from path_column", key="label_column")
    base = Path(root).expanduser()
    if not base.exists():
        raise DataError("image folder not found", file=base, hint="Check the path")
    if not base.is_dir():
        raise DataError("is not a folder", file=base, hint="Pass a folder holding one sub-folder of images per class")
    base = base.resolve()
    ignored = 0
    class_dirs: list[Path] = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            if entry.is_file():
                ignored += 1
            continue
        if entry.is_dir():
            class_dirs.append(entry)
        else:
            ignored += 1
    if not class_dirs:
        raise DataError(
            "holds no class folders",
            file=base,
            hint="Put the images of each class in their own sub-folder, e.g. root/cat/1.jpg and root/dog/2.jpg",
        )
    paths: list[str] = []
    labels: list[str] = []
    for class_dir in class_dirs:
        found, skipped = _images_under(class_dir)
        ignored += skipped
        if not found:
            raise DataError(
                f"class folder {class_dir.name!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})",
                file=class_dir,
                hint="Add images to it or remove the folder",
            )
        paths.extend(found)
        labels.extend([class_dir.name] * len(found))
    if len(class_dirs) < 2:
        raise DataError(
            f"holds only one class folder ({class_dirs[0].name!r}); a classifier needs at least 2 classes",
            file=base,
            hint="Add a sub-folder of images for each other class",
        )
    df = pd.DataFrame({path_column: paths, label_column: labels})
    df.attrs["ignored_files"] = ignored
    df.attrs["root"] = str(base)
    return df


def _images_under(folder: Path) -> tuple[list[str], int]:
    """Image files anywhere below ``folder``, sorted, and the number of other files."""
    found: list[str] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(name):
                found.append(os.path.join(dirpath, name))
            else:
                ignored += 1
    found.sort(key=lambda p: Path(p).relative_to(folder).parts)
    return found, ignored


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """Every image file below ``folder`` (hidden files and folders skipped), sorted; a :class:`DataError` if none."""
    base = Path(folder).resolve()
    found, _ = _images_under(base)
    if not found:
        raise DataError("no images in this folder", file=base, hint="Give a folder of .png/.jpg/... files")
    return found


def resolve_image_paths(
    df: pd.DataFrame,
    path_column: str,
    root: str | os.PathLike[str],
    *,
    file: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Absolute paths of the images named in ``df[path_column]``, checked to stay under ``root``.

    Paths in the column are relative to ``root``; an absolute path is accepted only when it
    lies inside ``root``. A path that leaves ``root`` once ``..`` and symbolic links are
    resolved is refused, so a table cannot make tunesmith read arbitrary files. Whether the
    files exist is not checked here: :func:`decode_images` reports missing files.

    Parameters
    ----------
    df:
        The table. Rows are reported 1-based in table order (``df.iloc[n - 1]`` is row ``n``).
    path_column:
        The column of image paths.
    root:
        The folder the paths are relative to.
    file:
        The table's file name, used in error messages.

    Raises
    ------
    DataError
        The column is missing, a cell is empty, or a path escapes ``root``.
    """
    file = os.fspath(file) if file is not None else None
    if path_column not in df.columns:
        raise DataError(
            "column of image paths not found",
            file=file,
            column=path_column,
            hint=f"The columns are {', '.join(map(repr, map(str, df.columns)))}",
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(
            "image root folder not found" if not base.exists() else "image root is not a folder",
            file=base,
            hint="Pass the folder the paths in the table are relative to",
        )
    base = base.resolve()
    resolved: list[str] = []
    for i, value in enumerate(df[path_column].tolist()):
        row = i + 1
        if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
            raise DataError("empty image path", file=file, row=row, column=path_column)
        text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
        path = Path(text.strip()).expanduser()
        candidate = path if path.is_absolute() else base / path
        full = candidate.resolve(strict=False)
        if not full.is_relative_to(base):
            raise DataError(
                f"image path {text!r} escapes the image root {str(base)!r}",
                file=file,
                row=row,
                column=path_column,
                hint="Paths must point inside the root folder (no '..' or symbolic links leading out of it)",
            )
        resolved.append(str(full))
    return resolved


# --------------------------------------------------------------------------- decoding


@dataclass
class DecodeReport:
    """What :func:`decode_images` read and what it left out.

    Attributes
    ----------
    n_total:
        Number of paths given.
    n_kept:
        Number of images decoded.
    skipped:
        ``(row, path, reason)`` of each file left out (``on_error="skip"``), in input order.
    """

    n_total: int = 0
    n_kept: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """Number of files left out."""
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for run records."""
        return {
            "n_total": self.n_total,
            "n_kept": self.n_kept,
            "n_skipped": self.n_skipped,
            "skipped": [{"row": row, "path": path, "reason": reason} for row, path, reason in self.skipped],
        }


class _ImageProblem(Exception):
    """Why one image could not be decoded (the reason is the message)."""


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ConfigError(f"must be a whole number >= 1, got {size!r}", key="size")
    return int(size)


def _check_choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}", key=key)
    return str(value)


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im)
        if arr.ndim == 3:  # multi-channel high bit depth: keep the first three channels
            arr = arr[..., :3]
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise _ImageProblem("image holds NaN or infinite pixel values")
        top = float(values.max()) if values.size else 0.0
        if mode == "F" and top <= 1.0:
            values = values * 255.0
        elif top > 255.0:  # 16-bit samples
            values = values / 257.0
        out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        elif out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(out), mode="RGB")
    return im.convert("RGB")


def _resize(im: PILImage.Image, size: int, resize: str) -> PILImage.Image:
    from PIL import Image

    width, height = im.size
    if width < 1 or height < 1:
        raise _ImageProblem("image has no pixels")
    if (width, height) == (size, size):
        return im
    if resize == "squash":
        return im.resize((size, size), Image.Resampling.BICUBIC)
    # "crop": scale the shorter side to `size`, keep the centred square.
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def _bomb_reason(detail: str) -> str:
    return (
        f"image too large, treated as corrupt (possible decompression bomb: {detail}); raise "
        "PIL.Image.MAX_IMAGE_PIXELS if the image is genuine"
    )


def _decode_one(source: str | io.BytesIO, size: int, resize: str) -> np.ndarray:
    """Decode, orient, convert and resize one image; :class:`_ImageProblem` says why it failed."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as opened:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that (it raises above):
            # refuse both, before decoding anything. Checked here rather than by turning the
            # warning into an error, because warning filters are global and not thread-safe.
            limit = Image.MAX_IMAGE_PIXELS
            pixels = opened.width * opened.height
            if limit is not None and pixels > limit:
                raise _ImageProblem(_bomb_reason(f"{pixels} pixels is more than the limit of {limit}"))
            if opened.format == "JPEG":
                # Let libjpeg decode at a reduced scale that still covers `size`.
                opened.draft(opened.mode, (size, size))
            opened.load()
            oriented = ImageOps.exif_transpose(opened)
            assert oriented is not None
            rgb = _resize(_to_rgb(oriented), size, resize)
            arr = np.asarray(rgb, dtype=np.uint8)
    except _ImageProblem:
        raise
    except FileNotFoundError:
        raise _ImageProblem("file not found") from None
    except IsADirectoryError:
        raise _ImageProblem("is a folder, not an image file") from None
    except PermissionError:
        raise _ImageProblem("permission denied") from None
    except Image.DecompressionBombError as exc:
        raise _ImageProblem(_bomb_reason(str(exc))) from None
    except UnidentifiedImageError:
        raise _ImageProblem("not an image Pillow can read (corrupt, or not an image format)") from None
    except MemoryError:
        raise _ImageProblem("not enough memory to decode the image") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise _ImageProblem(f"truncated or incomplete image ({text})") from None
        raise _ImageProblem(f"corrupt or unreadable image ({text or type(exc).__name__})") from None
    except Exception as exc:  # Pillow's decoders raise many types on malformed data
        raise _ImageProblem(f"corrupt image ({type(exc).__name__}: {exc})") from None
    if arr.shape != (size, size, 3):
        raise _ImageProblem(f"decoded to an unexpected shape {arr.shape}")
    return arr


def decode_images(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    *,
    on_error: OnError = "raise",
    resize: ResizeMode = "crop",
    progress: bool = False,
    rows: Sequence[int] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, DecodeReport]:
    """Read image files into one ``uint8`` array of shape ``(N_kept, size, size, 3)``.

    Each file is opened with Pillow and fully decoded (so a truncated file fails), turned
    upright by its EXIF orientation, converted to RGB (grayscale, palette, CMYK and 16-bit
    images are handled; transparency is composited on white) and resized with antialiased
    bicubic resampling.

    Parameters
    ----------
    paths:
        Image files.
    size:
        Side of the square output images, in pixels.
    on_error:
        ``"raise"``: a file that cannot be decoded raises :class:`DataError`. ``"skip"``: it
        is left out and listed in the report.
    resize:
        ``"crop"``: scale the shorter side to ``size`` and keep the centred square (keeps the
        aspect ratio). ``"squash"``: stretch the whole image to ``size`` x ``size``.
    progress:
        Show a progress bar.
    rows:
        Row number of each path for messages (default: 1-based position in ``paths``).
    file:
        The table the paths came from, for messages.

    Returns
    -------
    images, kept, report:
        The decoded images; the indices into ``paths`` of the kept images (``int64``); a
        :class:`DecodeReport`.

    Raises
    ------
    DataError
        A file is missing, unreadable, truncated, corrupt or too large, with ``on_error="raise"``.
    ConfigError
        A bad ``size``, ``resize`` or ``on_error``.
    """
    size = _check_size(size)
    _check_choice(on_error, _ON_ERROR, "on_error")
    _check_choice(resize, _RESIZE_MODES, "resize")
    file = os.fspath(file) if file is not None else None
    n = len(paths)
    if rows is not None and len(rows) != n:
        raise ConfigError(f"has {len(rows)} entries for {n} paths", key="rows")
    row_of = [int(r) for r in rows] if rows is not None else list(range(1, n + 1))
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    report = DecodeReport(n_total=n)
    with progress_bar("decoding images", n, unit="images", enabled=progress and n > 2) as bar:
        for i, raw in enumerate(paths):
            path = os.fspath(raw)
            try:
                out[len(kept)] = _decode_one(path, size, resize)
            except _ImageProblem as problem:
                if on_error == "raise":
                    if file is not None:
                        raise DataError(
                            f"image {path!r}: {problem}", file=file, row=row_of[i], hint=_SKIP_HINT
                        ) from None
                    raise DataError(str(problem), file=path, row=row_of[i], hint=_SKIP_HINT) from None
                report.skipped.append((row_of[i], path, str(problem)))
            else:
                kept.append(i)
            bar.advance(1)
    report.n_kept = len(kept)
    return out[: len(kept)], np.asarray(kept, dtype=np.int64), report


def decode_image_bytes(data: bytes, size: int, *, resize: ResizeMode = "crop", where: str = "image") -> np.ndarray:
    """Decode one encoded image (PNG, JPEG, ...) held in memory to ``(size, size, 3)`` ``uint8``.

    Meant for images sent base64-encoded in an HTTP request; the conversions are those of
    :func:`decode_images`. ``where`` names the image in error messages (such as
    ``"instances[3].image"``).

    Raises
    ------
    DataError
        ``data`` is empty, not bytes, or not a decodable image; the message starts with ``where``.
    """
    size = _check_size(size)
    _check_choice(resize, _RESIZE_MODES, "resize")
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise DataError(f"{where}: expected the bytes of an encoded image, got {type(data).__name__}")
    if not data:
        raise DataError(f"{where}: the image is empty (0 bytes)")
    try:
        return _decode_one(io.BytesIO(data), size, resize)
    except _ImageProblem as problem:
        raise DataError(f"{where}: {problem}", hint="Send a PNG, JPEG, BMP, GIF, WebP or TIFF image") from None


# --------------------------------------------------------------------------- arrays


def _as_nhwc(x: np.ndarray) -> np.ndarray:
    """Reorder an accepted array shape to ``(N, H, W, C)`` with ``C`` 1 or 3."""
    if x.ndim == 2:
        n, flat = x.shape
        side = math.isqrt(flat)
        if side < 1 or side * side != flat:
            raise DataError(
                f"image array of shape {x.shape}: {flat} values per row is not a square image",
                hint=f"Expected {_ARRAY_SHAPES}",
            )
        return x.reshape(n, side, side, 1)
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3):
            return x
        if x.shape[1] in (1, 3):
            return x.transpose(0, 2, 3, 1)
    raise DataError(f"image array of shape {x.shape} is not a batch of images", hint=f"Expected {_ARRAY_SHAPES}")


def _as_uint8(x: np.ndarray) -> np.ndarray:
    """Pixel values as ``uint8``: ``uint8`` as is, floats in ``[0, 1]`` times 255, else ``[0, 255]``."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(
            f"image array of dtype {x.dtype} is not numeric pixel data",
            hint="Pass uint8 values in [0, 255] or floats in [0, 1] or [0, 255]",
        )
    if x.size == 0:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(
                "image array holds NaN or infinite values", hint="Replace or drop those images before passing them"
            )
        values = x.astype(np.float32)
        if float(values.max()) <= 1.0:
            values = values * 255.0
    else:
        values = x.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise DataError(
            f"image array values span [{low:g}, {high:g}], outside [0, 255]",
            hint="Pass uint8 values in [0, 255] or floats in [0, 1] or [0, 255]",
        )
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def images_from_array(x: Any, size: int | None = None, *, resize: ResizeMode = "squash") -> np.ndarray:
    """Images held in memory as a ``uint8`` array of shape ``(N, size, size, 3)``.

    Accepted shapes: ``(N, H, W)``, ``(N, H, W, 1)``, ``(N, H, W, 3)``, ``(N, 1, H, W)``,
    ``(N, 3, H, W)`` and flat ``(N, H*W)`` grayscale rows of square images (MNIST's 784 values
    are 28 x 28). A 4-D array whose last axis is 1 or 3 is read as channels-last. Values are
    ``uint8``, integers in ``[0, 255]``, or floats in ``[0, 1]`` (scaled by 255; told apart by
    a maximum of at most 1.0) or ``[0, 255]``. Grayscale is repeated to three channels.

    Parameters
    ----------
    x:
        A numpy array (or anything ``numpy.asarray`` accepts, such as a CPU tensor).
    size:
        Side of the square output; ``None`` keeps the input size.
    resize:
        ``"squash"`` stretches to ``size`` x ``size``; ``"crop"`` first keeps the centred
        square. Resizing is bilinear with antialiasing.

    Raises
    ------
    DataError
        An unaccepted shape, non-numeric values, NaN or values out of range.
    """
    if size is not None:
        size = _check_size(size)
    _check_choice(resize, _RESIZE_MODES, "resize")
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise DataError(f"image array of shape {arr.shape} is not a batch of images", hint=f"Expected {_ARRAY_SHAPES}")
    images = _as_uint8(_as_nhwc(arr))
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise DataError(f"image array of shape {arr.shape} has images with no pixels", hint=f"Expected {_ARRAY_SHAPES}")
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    if size is None:
        return np.ascontiguousarray(images)
    if resize == "crop":
        h, w = images.shape[1:3]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        images = images[:, top : top + side, left : left + side]
    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images), _ARRAY_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + _ARRAY_CHUNK]))
        batch = chunk.permute(0, 3, 1, 2).float()
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + len(chunk)] = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# --------------------------------------------------------------------------- tensors


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8`` images ``(N, H, W, 3)`` as a float32 tensor ``(N, 3, H, W)`` in ``[0, 1]``."""
    import torch

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[3] != 3:
        raise DataError(f"images of shape {arr.shape}: expected (N, H, W, 3)", hint="Use images_from_array first")
    if arr.dtype != np.uint8:
        raise DataError(f"images of dtype {arr.dtype}: expected uint8", hint="Use images_from_array first")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a ``(N, C, H, W)`` tensor (a new tensor)."""
    import torch

    if x.ndim != 4:
        raise DataError(f"tensor of shape {tuple(x.shape)}: expected (N, C, H, W)")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1)
    channels = x.shape[1]
    for name, values in (("mean", m), ("std", s)):
        if values.numel() not in (1, channels):
            raise ConfigError(f"has {values.numel()} values for {channels} channels", key=name)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ConfigError("every value must be > 0", key="std")
    return (x - m.reshape(1, -1, 1, 1)) / s.reshape(1, -1, 1, 1)
