"""Image inputs: class folders, path columns, decoding, arrays and tensors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tunesmith.data.images import (
    IMAGE_SUFFIXES,
    DecodeReport,
    decode_image_bytes,
    decode_images,
    images_from_array,
    normalize,
    read_image_folder,
    resolve_image_paths,
    to_tensor,
)
from tunesmith.errors import ConfigError, DataError


def _save(path: Path, color: tuple[int, ...] | int = (255, 0, 0), size: tuple[int, int] = (12, 8), mode: str = "RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _png_bytes(mode: str = "RGB", color: tuple[int, ...] | int = (0, 0, 255), size=(10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- folders


def test_suffixes_cover_common_formats():
    assert {".png", ".jpg", ".jpeg", ".webp", ".tiff"} <= set(IMAGE_SUFFIXES)


def test_read_image_folder_classes_sorted_and_ignored(tmp_path):
    _save(tmp_path / "dog" / "b.png")
    _save(tmp_path / "dog" / "a.JPG")
    _save(tmp_path / "dog" / "sub" / "c.png")
    _save(tmp_path / "cat" / "z.bmp")
    (tmp_path / "cat" / "notes.txt").write_text("x")
    (tmp_path / "cat" / ".DS_Store").write_text("x")
    (tmp_path / "README.md").write_text("x")
    df = read_image_folder(tmp_path)
    assert list(df.columns) == ["path", "label"]
    assert df["label"].tolist() == ["cat", "dog", "dog", "dog"]
    names = [Path(p).relative_to(tmp_path.resolve()).as_posix() for p in df["path"]]
    assert names == ["cat/z.bmp", "dog/a.JPG", "dog/b.png", "dog/sub/c.png"]
    assert all(os.path.isabs(p) for p in df["path"])
    assert df.attrs["ignored_files"] == 3
    again = read_image_folder(tmp_path, label_column="y", path_column="file")
    assert list(again.columns) == ["file", "y"]
    assert again["file"].tolist() == df["path"].tolist()


def test_read_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        read_image_folder(tmp_path / "missing")
    assert "missing" in str(err.value)
    a_file = tmp_path / "f.png"
    _save(a_file)
    with pytest.raises(DataError, match="not a folder"):
        read_image_folder(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(empty)
    one = tmp_path / "one"
    _save(one / "cat" / "a.png")
    with pytest.raises(DataError, match="at least 2 classes"):
        read_image_folder(one)
    _save(one / "dog" / "a.png")
    (one / "bird").mkdir()
    (one / "bird" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="'bird' holds no images") as err:
        read_image_folder(one)
    assert str(one / "bird") in str(err.value)


# --------------------------------------------------------------------------- path columns


def test_resolve_relative_and_absolute_inside(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "a.png")
    _save(root / "sub" / "b.png")
    df = pd.DataFrame({"img": ["a.png", "sub/../sub/b.png", str(root / "a.png")]})
    paths = resolve_image_paths(df, "img", root, file="t.csv")
    assert paths == [
        str((root / "a.png").resolve()),
        str((root / "sub" / "b.png").resolve()),
        str((root / "a.png").resolve()),
    ]
    # existence is not checked here
    assert resolve_image_paths(pd.DataFrame({"img": ["nope.png"]}), "img", root) == [str(root.resolve() / "nope.png")]


def test_resolve_refuses_escape_with_row_and_column(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "a.png")
    _save(tmp_path / "secret.png")
    df = pd.DataFrame({"img": ["a.png", "../secret.png"]})
    with pytest.raises(DataError, match="escapes the image root") as err:
        resolve_image_paths(df, "img", root, file="t.csv")
    assert err.value.row == 2 and err.value.column == "img" and err.value.file == "t.csv"
    assert "t.csv, row 2, column 'img'" in str(err.value)
    with pytest.raises(DataError, match="escapes"):
        resolve_image_paths(pd.DataFrame({"img": [str(tmp_path / "secret.png")]}), "img", root)


def test_resolve_refuses_symlink_escape(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "a.png")
    outside = _save(tmp_path / "outside" / "x.png")
    try:
        (root / "link.png").symlink_to(outside)
        (root / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links not available")
    for name in ("link.png", "dirlink/x.png"):
        df = pd.DataFrame({"img": ["a.png", "a.png", name]})
        with pytest.raises(DataError, match="escapes") as err:
            resolve_image_paths(df, "img", root, file="t.csv")
        assert (err.value.row, err.value.column) == (3, "img")


def test_resolve_empty_cell_and_missing_column(tmp_path):
    root = tmp_path
    for bad in (None, float("nan"), "  "):
        df = pd.DataFrame({"img": ["a.png", bad]}, dtype=object)
        with pytest.raises(DataError, match="empty image path") as err:
            resolve_image_paths(df, "img", root, file="t.csv")
        assert (err.value.row, err.value.column) == (2, "img")
    with pytest.raises(DataError, match="not found") as err:
        resolve_image_paths(pd.DataFrame({"x": ["a"]}), "img", root)
    assert err.value.column == "img"


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_decode_modes_to_rgb(tmp_path, resize):
    files = [
        _save(tmp_path / "red.png", (255, 0, 0), (40, 20)),
        _save(tmp_path / "gray.png", 128, (20, 40), mode="L"),
        _save(tmp_path / "clear.png", (0, 0, 0, 0), (16, 16), mode="RGBA"),
        _save(tmp_path / "red.jpg", (255, 0, 0), (30, 30)),
        _save(tmp_path / "cmyk.jpg", (0, 0, 0, 0), (16, 16), mode="CMYK"),
    ]
    pal = Image.new("P", (9, 9), 0)
    pal.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    pal.save(tmp_path / "pal.png")
    files.append(tmp_path / "pal.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    files.append(tmp_path / "deep.png")
    images, kept, report = decode_images(files, 8, resize=resize)
    assert images.shape == (7, 8, 8, 3) and images.dtype == np.uint8
    assert kept.tolist() == list(range(7))
    assert report.n_total == report.n_kept == 7 and report.skipped == []
    assert (images[0] == [255, 0, 0]).all()  # pure red stays red
    assert (images[1] == 128).all()
    assert (images[2] == 255).all()  # transparent composited on white
    assert np.abs(images[3].astype(int) - [255, 0, 0]).max() <= 3  # JPEG is lossy
    assert (images[4] >= 250).all()  # CMYK 0,0,0,0 is white
    assert (images[5] == [0, 255, 0]).all()
    assert (images[6] == 255).all()  # 16-bit white


def test_decode_crop_keeps_centre_and_exif(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :10] = [255, 0, 0]
    arr[:, 10:20] = [0, 255, 0]
    arr[:, 20:] = [0, 0, 255]
    Image.fromarray(arr).save(tmp_path / "bands.png")
    crop, _, _ = decode_images([tmp_path / "bands.png"], 10, resize="crop")
    assert (crop[0] == [0, 255, 0]).all()
    squash, _, _ = decode_images([tmp_path / "bands.png"], 9, resize="squash")
    assert (squash[0, :, 0] == [255, 0, 0]).all() and (squash[0, :, -1] == [0, 0, 255]).all()
    # EXIF orientation 6 (rotate 90 CW on display): a 20x10 image shows as 10x20.
    wide = np.zeros((10, 20, 3), dtype=np.uint8)
    wide[:, :10] = [255, 0, 0]
    wide[:, 10:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).save(tmp_path / "rot.png", exif=exif)
    out, _, _ = decode_images([tmp_path / "rot.png"], 10, resize="squash")
    assert (out[0, 0, 5] == [255, 0, 0]).all() and (out[0, -1, 5] == [0, 0, 255]).all()


def test_decode_corrupt_raises_with_file_and_row(tmp_path):
    good = _save(tmp_path / "good.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    full = _png_bytes(size=(64, 64))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="not an image") as err:
        decode_images([good, junk], 8)
    assert err.value.row == 2 and str(junk) in str(err.value) and 'on_error="skip"' in str(err.value)
    with pytest.raises(DataError) as err:
        decode_images([trunc], 8, rows=[7], file="table.csv")
    assert err.value.row == 7 and err.value.file == "table.csv" and str(trunc) in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        decode_images([tmp_path / "missing.png"], 8)


def test_decode_skip_counts(tmp_path):
    good = _save(tmp_path / "good.png")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    images, kept, report = decode_images([junk, good, tmp_path / "missing.png"], 8, on_error="skip")
    assert images.shape == (1, 8, 8, 3) and kept.tolist() == [1]
    assert isinstance(report, DecodeReport)
    assert report.n_total == 3 and report.n_kept == 1 and report.n_skipped == 2
    assert [(row, Path(p).name) for row, p, _ in report.skipped] == [(1, "junk.jpg"), (3, "missing.png")]
    d = report.to_dict()
    assert d["n_skipped"] == 2 and d["skipped"][0]["row"] == 1 and "reason" in d["skipped"][0]


def test_decode_bomb_is_refused(tmp_path, monkeypatch):
    big = _save(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="decompression bomb"):
        decode_images([big], 8)
    _, kept, report = decode_images([big], 8, on_error="skip")
    assert kept.size == 0 and "too large" in report.skipped[0][2]
    # Between the limit and twice it Pillow only warns; that is refused too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DataError, match="more than the limit of 3000"):
        decode_images([big], 8)


def test_decode_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="size"):
        decode_images([], 0)
    with pytest.raises(ConfigError, match="on_error"):
        decode_images([], 8, on_error="ignore")  # type: ignore[arg-type]
    images, kept, report = decode_images([], 8)
    assert images.shape == (0, 8, 8, 3) and kept.shape == (0,) and report.n_total == 0


def test_decode_image_bytes(tmp_path):
    out = decode_image_bytes(_png_bytes("LA", (255, 0), (20, 10)), 6, where="instances[0].image")
    assert out.shape == (6, 6, 3) and (out == 255).all()
    with pytest.raises(DataError, match=r"^instances\[2\].image: not an image"):
        decode_image_bytes(b"garbage", 6, where="instances[2].image")
    with pytest.raises(DataError, match="empty"):
        decode_image_bytes(b"", 6)


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    "shape",
    [(2, 5, 5), (2, 5, 5, 1), (2, 5, 5, 3), (2, 1, 5, 5), (2, 3, 5, 5), (2, 25)],
)
@pytest.mark.parametrize("dtype", ["uint8", "unit_float", "byte_float"])
def test_images_from_array_shapes_and_dtypes(shape, dtype):
    base = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    base.flat[0] = 255  # the maximum tells [0, 1] floats from [0, 255] floats
    x = {"uint8": base, "unit_float": base / np.float32(255.0), "byte_float": base.astype(np.float64)}[dtype]
    nhwc = base.transpose(0, 2, 3, 1) if len(shape) == 4 and shape[1] in (1, 3) else base.reshape(2, 5, 5, -1)
    expected = np.repeat(nhwc, 3, axis=3) if nhwc.shape[3] == 1 else nhwc
    out = images_from_array(x)
    assert out.shape == (2, 5, 5, 3) and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    resized = images_from_array(x, 8)
    assert resized.shape == (2, 8, 8, 3) and resized.dtype == np.uint8


def test_images_from_array_mnist_like_and_resize_values():
    x = np.full((3, 784), 200, dtype=np.uint8)
    out = images_from_array(x, 14)
    assert out.shape == (3, 14, 14, 3) and (out == 200).all()
    red = np.zeros((1, 12, 20, 3), dtype=np.float32)
    red[..., 0] = 1.0
    out = images_from_array(red, 6, resize="crop")
    assert out.shape == (1, 6, 6, 3) and (out == [255, 0, 0]).all()


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((2, 5, 5, 4)), "is not a batch of images"),
        (np.zeros((2, 26)), "not a square image"),
        (np.zeros(5), "is not a batch"),
        (np.full((1, 4, 4), np.nan), "NaN"),
        (np.full((1, 4, 4), 300.0), "outside"),
        (np.full((1, 4, 4), -1), "outside"),
    ],
)
def test_images_from_array_errors(x, match):
    with pytest.raises(DataError, match=match) as err:
        images_from_array(x)
    if "batch" in match or "square" in match:
        assert "(N, H, W)" in str(err.value)


def test_to_tensor_and_normalize():
    x = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    x[..., 1] = 255
    t = to_tensor(x)
    assert t.shape == (2, 3, 4, 5) and t.dtype == torch.float32
    assert float(t[:, 1].min()) == 1.0 and float(t[:, 0].max()) == 0.0
    n = normalize(t, [0.5, 0.5, 0.5], [0.5, 0.25, 0.5])
    assert torch.allclose(n[:, 1], torch.full_like(n[:, 1], 2.0)) and torch.allclose(
        n[:, 0], torch.full_like(n[:, 0], -1.0)
    )
    with pytest.raises(DataError, match=r"\(N, H, W, 3\)"):
        to_tensor(np.zeros((4, 5, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="std"):
        normalize(t, [0.5] * 3, [0.5, 0.0, 0.5])


def test_table_with_path_column_end_to_end(tmp_path):
    from tunesmith.data.io import read_table

    root = tmp_path / "imgs"
    _save(root / "a.png", (255, 0, 0))
    _save(root / "sub" / "b.jpg", (0, 0, 255))
    table = tmp_path / "train.csv"
    pd.DataFrame({"image": ["a.png", "sub/b.jpg", "gone.png"], "label": ["x", "y", "x"]}).to_csv(table, index=False)
    df = read_table(table)
    paths = resolve_image_paths(df, "image", root, file=table)
    with pytest.raises(DataError) as err:
        decode_images(paths, 4, file=table, progress=True)
    assert err.value.row == 3 and err.value.file == str(table) and "gone.png" in str(err.value)
    images, kept, report = decode_images(paths, 4, file=table, on_error="skip")
    assert kept.tolist() == [0, 1] and report.skipped[0][0] == 3
    assert (images[0] == [255, 0, 0]).all()
