"""LightGBM model files from loaded folders, loaded only once they proved harmless.

LightGBM's own parser trusts the model text it reads: a damaged or crafted ``lightgbm.txt``
can abort or crash the process. :func:`load_lightgbm` checks the text in Python
(:func:`check_lightgbm_text`), then loads it and predicts in a child process
(:func:`_child_verdict`), and only then loads it here. LightGBM itself is imported only
when a booster is loaded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any

from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import SafeFolder, run_isolated, signal_name

__all__ = ["MAX_LIGHTGBM_BYTES", "check_lightgbm_text", "load_lightgbm"]

MAX_LIGHTGBM_BYTES = 256 * 1024 * 1024
"""Largest ``lightgbm.txt`` loaded (thousands of trees of hundreds of leaves fit well within it)."""

_MAX_LEAVES = 131_072  # LightGBM's own upper limit on num_leaves
_TREE_KEYS = frozenset(
    {
        "num_leaves", "num_cat", "split_feature", "split_gain", "threshold", "decision_type", "left_child",
        "right_child", "leaf_value", "leaf_weight", "leaf_count", "internal_value", "internal_weight",
        "internal_count", "cat_boundaries", "cat_threshold", "is_linear", "shrinkage",
    }
)  # fmt: skip
_OBJECTIVES = {"binary": ("binary",), "multiclass": ("multiclass", "multiclassova"), "regression": ("regression",)}

# Loads the model text from stdin through LightGBM's C library and predicts a few extreme and
# random rows: run in a child process, because LightGBM aborts or crashes the whole process on
# some malformed files. It calls what the Python package calls (load, loaded parameters,
# predict), through ctypes: importing the package would import scikit-learn and pandas, ten
# times the cost of the check itself.
_LGB_CHILD = """
import ctypes, json, random, sys
lib = ctypes.CDLL(sys.argv[1])
lib.LGBM_GetLastError.restype = ctypes.c_char_p
def fail(what):
    said = (lib.LGBM_GetLastError() or b"").decode("utf-8", "replace").splitlines() or [what]
    print("[Fatal] " + said[0], file=sys.stderr)
    sys.exit(3)
text = sys.stdin.buffer.read()
handle, iterations = ctypes.c_void_p(), ctypes.c_int(0)
if lib.LGBM_BoosterLoadModelFromString(ctypes.c_char_p(text), ctypes.byref(iterations), ctypes.byref(handle)):
    fail("cannot load")
n_features, n_classes = ctypes.c_int(0), ctypes.c_int(0)
if lib.LGBM_BoosterGetNumFeature(handle, ctypes.byref(n_features)):
    fail("no feature count")
if lib.LGBM_BoosterGetNumClasses(handle, ctypes.byref(n_classes)):
    fail("no class count")
if hasattr(lib, "LGBM_BoosterGetLoadedParam"):
    size = ctypes.c_int64(0)
    buffer = ctypes.create_string_buffer(1 << 16)
    for _ in range(2):
        if lib.LGBM_BoosterGetLoadedParam(handle, ctypes.c_int64(len(buffer)), ctypes.byref(size), buffer):
            fail("no parameters")
        if size.value <= len(buffer):
            break
        buffer = ctypes.create_string_buffer(size.value)
    try:
        json.loads(buffer.value.decode("utf-8"))
    except ValueError:
        fail("its parameters do not read back as JSON")
f = n_features.value
rng = random.Random(0)
rows = [[0.0] * f, [float("nan")] * f, [1e30] * f, [-1e30] * f]
if f <= 10000:
    rows += [[rng.gauss(0.0, 10.0) for _ in range(f)] for _ in range(32)]
    rows += [[float(rng.randint(-1, 63)) for _ in range(f)] for _ in range(32)]
flat = [x for row in rows for x in row]
data = (ctypes.c_double * max(1, len(flat)))(*flat)
out = (ctypes.c_double * (len(rows) * max(1, n_classes.value)))()
out_len = ctypes.c_int64(0)
if lib.LGBM_BoosterPredictForMat(
    handle, data, ctypes.c_int(1), ctypes.c_int32(len(rows)), ctypes.c_int32(f), ctypes.c_int(1), ctypes.c_int(0),
    ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_char_p(b"num_threads=1"), ctypes.byref(out_len), out,
):
    fail("cannot predict")
lib.LGBM_BoosterFree(handle)
"""


def _lightgbm_library() -> str:
    """Path of LightGBM's shared library, the one this process's ``lightgbm`` package uses."""
    import lightgbm as lgb

    name = getattr(getattr(lgb.basic, "_LIB", None), "_name", None)
    if isinstance(name, str) and os.path.isfile(name):
        return name
    found = sorted((Path(lgb.__file__).parent / "lib").glob("lib_lightgbm.*"))
    if not found:
        raise ArtifactError("cannot find LightGBM's library to check the model with", hint="Reinstall lightgbm")
    return str(found[0])


_verdicts: dict[str, str | None] = {}
_verdict_lock = threading.Lock()


def _lgb_refusal(path: Path, why: str) -> ArtifactError:
    return ArtifactError(
        f"not a usable LightGBM model: {why}",
        path=path,
        hint="The file is damaged or was not written by tunesmith; re-save the model",
    )


def _ints(text: str, count: int, low: int, high: int, what: str, path: Path) -> list[int]:
    parts = text.split()
    if len(parts) != count:
        raise _lgb_refusal(path, f"{what} holds {len(parts)} values, expected {count}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise _lgb_refusal(path, f"{what} holds a value that is not a whole number") from None
    if values and (min(values) < low or max(values) > high):
        raise _lgb_refusal(path, f"{what} holds a value outside [{low}, {high}]")
    return values


def _count(text: str, count: int, what: str, path: Path) -> None:
    if len(text.split()) != count:
        raise _lgb_refusal(path, f"{what} holds {len(text.split())} values, expected {count}")


def check_lightgbm_text(text: str, *, path: Path, n_features: int, n_classes: int, task: str) -> None:
    """Refuse LightGBM model text that LightGBM itself could not parse safely.

    LightGBM's parser trusts the file: counts, child indices, feature indices and tree offsets
    are used as given, so a damaged or crafted file aborts the process (a ``Log::Fatal`` inside
    its parallel parser) or reads out of bounds. This checks, in Python, everything those
    depend on: the header agrees with the model (``n_features`` inputs, ``n_classes`` trees per
    iteration, the objective of ``task``), ``tree_sizes`` matches the tree blocks byte for
    byte, and every tree has arrays of the lengths its ``num_leaves`` and ``num_cat`` imply,
    feature indices below ``n_features``, children that form one tree, and categorical splits
    within its bitsets. Any failure is an :class:`ArtifactError` naming ``path``.
    """
    if "\x00" in text or "\r" in text:
        raise _lgb_refusal(path, "it holds NUL or carriage-return characters, which LightGBM never writes")
    lines = text.split("\n")
    if not lines or lines[0] != "tree":
        raise _lgb_refusal(path, "it does not start with LightGBM's 'tree' line")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        line = lines[i]
        if line == "end of trees":
            break
        if "=" in line:
            key, value = line.split("=", 1)
            if key in header:
                raise _lgb_refusal(path, f"the header repeats {key!r}")
            header[key] = value
        elif line not in ("", "average_output"):
            raise _lgb_refusal(path, f"line {i + 1} of the header is not key=value")
        i += 1
    for key in ("version", "num_class", "num_tree_per_iteration", "max_feature_idx", "objective", "feature_names"):
        if key not in header:
            raise _lgb_refusal(path, f"the header lacks {key!r}")
    per_iteration = n_classes if task == "multiclass" else 1
    for key, want in (
        ("num_class", per_iteration),
        ("num_tree_per_iteration", per_iteration),
        ("max_feature_idx", n_features - 1),
    ):
        got = _ints(header[key], 1, -1, 1 << 31, key, path)[0]
        if got != want:
            raise _lgb_refusal(path, f"{key} is {got}, but this model needs {want}")
    if "label_index" in header:
        _ints(header["label_index"], 1, 0, 1 << 31, "label_index", path)
    objective = header["objective"].split(" ")[0]
    if objective not in _OBJECTIVES.get(task, ()):
        raise _lgb_refusal(path, f"its objective {objective!r:.40} does not fit a {task} model")
    _count(header["feature_names"], n_features, "feature_names", path)
    if "feature_infos" in header:
        _count(header["feature_infos"], n_features, "feature_infos", path)

    # Tree blocks: "Tree=k", its key=value lines, blank lines; then "end of trees".
    # Byte offset of each line's start (ASCII, as LightGBM writes it: characters are bytes).
    widths = map(len, lines) if text.isascii() else (len(line.encode("utf-8")) for line in lines)
    offsets = [0, *itertools.accumulate(w + 1 for w in widths)]
    starts: list[int] = []
    while i < len(lines) and lines[i] != "end of trees":
        if lines[i] == "":
            i += 1
            continue
        if lines[i] != f"Tree={len(starts)}":
            raise _lgb_refusal(path, f"line {i + 1} should be 'Tree={len(starts)}'")
        starts.append(i)
        i += 1
        fields: dict[str, str] = {}
        while i < len(lines) and lines[i] != "":
            if "=" not in lines[i]:
                raise _lgb_refusal(path, f"line {i + 1} (tree {len(starts) - 1}) is not key=value")
            key, value = lines[i].split("=", 1)
            if key not in _TREE_KEYS or key in fields:
                raise _lgb_refusal(path, f"tree {len(starts) - 1} has an unknown or repeated field {key!r:.40}")
            fields[key] = value
            i += 1
        _check_tree(fields, len(starts) - 1, n_features, path)
    if i >= len(lines):
        raise _lgb_refusal(path, "it lacks the 'end of trees' line (the file is truncated)")
    if len(starts) % per_iteration:
        raise _lgb_refusal(path, f"it holds {len(starts)} trees, not a multiple of {per_iteration}")
    if "tree_sizes" in header:
        # LightGBM parses trees in parallel at these byte offsets: each must be exact.
        sizes = _ints(header["tree_sizes"], len(starts), 0, 1 << 40, "tree_sizes", path)
        ends = [*starts[1:], i]
        for k, (begin, end) in enumerate(zip(starts, ends, strict=True)):
            if offsets[end] - offsets[begin] != sizes[k]:
                raise _lgb_refusal(
                    path, f"tree_sizes gives tree {k} {sizes[k]} bytes but it has {offsets[end] - offsets[begin]}"
                )
    tail = text.rstrip("\n").rsplit("\n", 1)[-1]
    if tail.startswith("pandas_categorical:"):
        try:
            json.loads(tail[len("pandas_categorical:") :])
        except ValueError:
            raise _lgb_refusal(path, "its pandas_categorical line is not JSON") from None


def _check_tree(fields: dict[str, str], k: int, n_features: int, path: Path) -> None:
    """One tree's arrays: lengths, index ranges, a proper binary tree, categorical bitsets in range."""
    where = f"tree {k}"
    for key in ("num_leaves", "num_cat", "leaf_value"):
        if key not in fields:
            raise _lgb_refusal(path, f"{where} lacks {key}")
    n = _ints(fields["num_leaves"], 1, 1, _MAX_LEAVES, f"{where} num_leaves", path)[0]
    num_cat = _ints(fields["num_cat"], 1, 0, max(0, n - 1), f"{where} num_cat", path)[0]
    if fields.get("is_linear", "0") != "0":
        raise _lgb_refusal(path, f"{where} is a linear tree, which tunesmith never trains")
    _count(fields["leaf_value"], n, f"{where} leaf_value", path)
    if n == 1:
        return
    for key in ("split_feature", "threshold", "decision_type", "left_child", "right_child"):
        if key not in fields:
            raise _lgb_refusal(path, f"{where} lacks {key}")
    inner = n - 1
    _ints(fields["split_feature"], inner, 0, n_features - 1, f"{where} split_feature", path)
    decision = _ints(fields["decision_type"], inner, 0, 11, f"{where} decision_type", path)
    left = _ints(fields["left_child"], inner, -n, n - 2, f"{where} left_child", path)
    right = _ints(fields["right_child"], inner, -n, n - 2, f"{where} right_child", path)
    for key, count in (
        ("split_gain", inner), ("leaf_weight", n), ("leaf_count", n),
        ("internal_value", inner), ("internal_weight", inner), ("internal_count", inner),
    ):  # fmt: skip
        if key in fields:
            _count(fields[key], count, f"{where} {key}", path)
    # Every node but the root, and every leaf, is the child of exactly one node, and every child
    # has a higher index than its parent (LightGBM numbers nodes in the order it splits): so
    # the arrays form one tree and prediction always walks down to a leaf.
    children = left + right
    if sorted(children) != [*range(-n, 0), *range(1, inner)] or any(
        (a >= 0 and a <= j) or (b >= 0 and b <= j) for j, (a, b) in enumerate(zip(left, right, strict=True))
    ):
        raise _lgb_refusal(path, f"{where}: its child indices do not form a tree")
    thresholds = fields["threshold"].split()
    if len(thresholds) != inner:
        raise _lgb_refusal(path, f"{where} threshold holds {len(thresholds)} values, expected {inner}")
    categorical = [j for j, d in enumerate(decision) if d & 1]
    if not num_cat:
        if categorical:
            raise _lgb_refusal(path, f"{where} has categorical splits but num_cat=0")
        return
    for key in ("cat_boundaries", "cat_threshold"):
        if key not in fields:
            raise _lgb_refusal(path, f"{where} lacks {key}")
    n_words = len(fields["cat_threshold"].split())
    bounds = _ints(fields["cat_boundaries"], num_cat + 1, 0, n_words, f"{where} cat_boundaries", path)
    if bounds[0] != 0 or bounds[-1] != n_words or any(a > b for a, b in itertools.pairwise(bounds)):
        raise _lgb_refusal(path, f"{where}: cat_boundaries do not split cat_threshold")
    _ints(fields["cat_threshold"], n_words, 0, (1 << 32) - 1, f"{where} cat_threshold", path)
    for j in categorical:
        try:
            index = float(thresholds[j])
        except ValueError:
            raise _lgb_refusal(path, f"{where}: a categorical threshold is not a number") from None
        if not (index.is_integer() and 0 <= index < num_cat):
            raise _lgb_refusal(path, f"{where}: a categorical split points outside its {num_cat} bitsets")


def _child_verdict(text: str, digest: str) -> str | None:
    """Why loading ``text`` and predicting with it fails in a child process, or None when it works.

    Cached by the text's SHA-256 for the life of the process, so the same file is checked once.
    """
    with _verdict_lock:
        if digest in _verdicts:
            return _verdicts[digest]
    # The child imports only the standard library and loads the very library file this process uses.
    library = _lightgbm_library()
    timeout = 60.0 + 10.0 * len(text) / (1 << 20)
    run = run_isolated(_LGB_CHILD, [library], text.encode("utf-8"), timeout=timeout, what="loading it")
    verdict = run.failure
    if run.returncode:
        said = [ln for ln in run.stderr.splitlines() if "[Fatal]" in ln]
        detail = said[-1].split("[Fatal]", 1)[1].strip()[:160] if said else ""
        if run.returncode < 0:
            how = f"LightGBM crashed the process that loaded it ({signal_name(run.returncode)})"
        else:
            how = f"LightGBM refused it (exit status {run.returncode})"
        verdict = f"{how}{': ' + detail if detail else ''}"
    with _verdict_lock:
        _verdicts[digest] = verdict
    return verdict


def load_lightgbm(
    folder: SafeFolder, rel: str, *, n_features: int, n_classes: int, task: str, source: str = "tunesmith.json"
) -> Any:
    """A LightGBM booster from the folder's ``rel``, loaded only after it proved harmless.

    The text (at most :data:`MAX_LIGHTGBM_BYTES`) is checked in Python
    (:func:`check_lightgbm_text`), then loaded and run on a few rows in a child process; only
    when that process exits cleanly is it loaded here. A malformed file is an
    :class:`ArtifactError` naming it, never a crashed process.
    """
    import lightgbm as lgb

    path = folder.file(rel, source=source, field_name="lightgbm")
    assert path is not None
    data = folder.read_bytes(rel, limit=MAX_LIGHTGBM_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _lgb_refusal(path, f"it is not UTF-8 text (byte {exc.start})") from None
    check_lightgbm_text(text, path=path, n_features=n_features, n_classes=n_classes, task=task)
    verdict = _child_verdict(text, hashlib.sha256(data).hexdigest())
    if verdict is not None:
        raise _lgb_refusal(path, verdict)
    try:
        booster = lgb.Booster(model_str=text)
    except (lgb.basic.LightGBMError, ValueError, TypeError) as exc:
        raise _lgb_refusal(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if booster.num_feature() != n_features:
        raise _lgb_refusal(path, f"it reads {booster.num_feature()} features, this model has {n_features}")
    return booster
