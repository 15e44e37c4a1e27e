"""The one registry of model kinds (text, image, tabular, recommender, personalised).

A kind is registered once, by the module that defines its estimator, with what the
estimator layer knows: the estimator class, how to load it from an opened folder, the file
that marks its folders and the keywords its loader takes. Layers above attach what they
build for a kind (the ONNX exporter, the batch/serving predictor, the search space) with
:func:`attach`, so ``tunesmith.load``, the CLI, export, batch prediction and serving all ask
this registry instead of keeping an ``if kind == ...`` chain of their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.runs.trust import SafeFolder, open_model

MODEL_FILE = "tunesmith.json"


@dataclass
class Kind:
    """One kind of model and everything the rest of tunesmith needs to know about it.

    ``open`` builds the estimator from a folder already opened through the trust checks
    (:class:`~tunesmith.runs.trust.SafeFolder`) and its metadata; ``options`` names the extra
    keywords it takes (``backbone=`` for text, ``base=`` for personalised stores). ``serving``
    names the server that serves it (``predict``, ``recommend`` or ``personalize``).
    """

    name: str
    estimator: type | None
    open: Callable[..., Any] | None
    summary: str
    marker: str = MODEL_FILE
    options: tuple[str, ...] = ()
    serving: str = "predict"
    classifier: bool = True
    exporter: Callable[..., Any] | None = None
    predictor: Callable[..., Any] | None = None
    search_space: Callable[..., Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind, or give a built-in kind declared below its estimator and loader.

    Registering a name twice with another estimator is refused, and so is a kind whose module
    says something else than its declaration (serving style, loader keywords, marker file).
    """
    old = _KINDS.get(kind.name)
    if old is not None and old.estimator is not None and old.estimator is not kind.estimator:
        raise ConfigError(f"a model kind named {kind.name!r} is registered already", key="kind")
    if old is not None and old.estimator is None:
        for name in ("serving", "options", "marker", "classifier"):
            if getattr(old, name) != getattr(kind, name):
                raise ConfigError(
                    f"kind {kind.name!r} is declared with {name}={getattr(old, name)!r}, "
                    f"registered with {getattr(kind, name)!r}",
                    key="kind",
                )
        for part in ("exporter", "predictor", "search_space"):  # attached before the module loaded
            if getattr(kind, part) is None:
                setattr(kind, part, getattr(old, part))
    _KINDS[kind.name] = kind
    return kind


# The built-in kinds, declared here, where importing costs nothing: serving a model exported to
# ONNX needs its kind's serving style and predictor, not its estimator (whose module loads
# torch). Each estimator module fills in its estimator and loader when it is imported.
for _name, _summary, _serving, _options, _marker, _classifier in (
    ("text", "a pre-trained text encoder fine-tuned on labeled texts", "predict", ("backbone",), MODEL_FILE, True),
    ("image", "a pre-trained image CNN fine-tuned on labeled images", "predict", (), MODEL_FILE, True),
    ("tabular", "LightGBM and a neural network on a table", "predict", ("backbone",), MODEL_FILE, True),
    ("recommender", "a recommender trained on interaction logs", "recommend", ("content_backbone",), MODEL_FILE, False),
    ("personalized", "adapters per user on a shared classifier", "personalize", ("base",), "personalize.json", True),
):
    _KINDS[_name] = Kind(
        _name, None, None, _summary, marker=_marker, options=_options, serving=_serving, classifier=_classifier
    )


def attach(name: str, **parts: Any) -> Kind:
    """Give a registered kind a part built by a layer above (``exporter=``, ``predictor=``, ...)."""
    kind = get(name)
    for key, value in parts.items():
        if not hasattr(kind, key) or key in ("name", "estimator", "open"):
            raise ConfigError(f"a kind has no part {key!r} to attach", key=key)
        setattr(kind, key, value)
    return kind


def names() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS)


def get(name: str) -> Kind:
    """The kind called ``name``, or a :class:`ConfigError` listing those there are."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown model kind {name!r}; known: {', '.join(_KINDS)}", key="kind") from None


def of(estimator: Any) -> Kind:
    """The kind of an estimator object (or class)."""
    cls = estimator if isinstance(estimator, type) else type(estimator)
    for kind in _KINDS.values():
        if kind.estimator is not None and issubclass(cls, kind.estimator):
            return kind
    raise ConfigError(f"{cls.__name__} is not a registered kind of model; known: {', '.join(_KINDS)}", key="kind")


def estimator(name: str) -> type:
    """The estimator class of the kind called ``name`` (its module must have been imported)."""
    kind = get(name)
    if kind.estimator is None:
        raise NotSupportedError(
            f"the {name} kind is declared but its estimator module is not imported",
            hint="Import tunesmith.kinds, which imports every kind",
        )
    return kind.estimator


def require(kind: Kind, part: str, what: str, instead: str) -> Callable[..., Any]:
    """The attached ``part`` of ``kind``, or an error saying ``what`` is not offered and what to use."""
    value = getattr(kind, part, None)
    if value is None:
        raise NotSupportedError(f"{what} is not offered for {kind.name} models", hint=instead)
    return value


def kind_of_meta(meta: dict[str, Any]) -> str:
    """The kind a model folder's metadata names: ``kind``, or text where old folders left it out.

    Recommenders were once saved with no ``kind`` but ``task: recommendation``.
    """
    kind = meta.get("kind", "text")
    if kind == "text" and meta.get("task") == "recommendation":
        return "recommender"
    return str(kind)


def _marked_kind(path: str | os.PathLike[str]) -> Kind | None:
    """The kind whose own marker file (not ``tunesmith.json``) the folder holds, if any."""
    root = os.fspath(path)
    if os.path.lexists(os.path.join(root, MODEL_FILE)):
        return None
    for kind in _KINDS.values():
        if kind.marker != MODEL_FILE and os.path.lexists(os.path.join(root, kind.marker)):
            return kind
    return None


def kind_of_folder(path: str | os.PathLike[str]) -> Kind:
    """The kind a folder holds: by its marker file, else by its checked ``tunesmith.json``."""
    marked = _marked_kind(path)
    if marked is not None:
        return marked
    _, meta = open_model(path)
    return get(kind_of_meta(meta))


def load(path: str | os.PathLike[str], **options: Any) -> Any:
    """Load a saved model folder of any registered kind; the folder's metadata picks the kind.

    The folder is untrusted input: it is opened once through
    :func:`~tunesmith.runs.trust.open_model` (no code runs, nothing outside it is read).
    ``options`` are the loader keywords of that kind (``backbone=`` for a head-only or LoRA
    text model whose backbone is a local folder, ``base=`` for a personalised adapter store);
    one the kind does not take is refused, naming the kind.

    Raises:
        ArtifactError: the folder is unsafe or malformed; the message names the file and field.
        ConfigError: a keyword the folder's kind does not take.
    """
    options = {k: v for k, v in options.items() if v is not None}
    marked = None if isinstance(path, SafeFolder) else _marked_kind(path)
    if marked is not None:  # a folder of a kind with its own marker opens itself (its trust checks)
        _check_options(marked, options)
        return opener(marked)(path, None, **options)
    folder, meta = open_model(path)
    kind = get(kind_of_meta(meta))
    _check_options(kind, options)
    return opener(kind)(folder, meta, **options)


def opener(kind: Kind) -> Callable[..., Any]:
    """The kind's folder loader; a declared kind whose module is not imported has none yet."""
    if kind.open is None:
        raise NotSupportedError(
            f"the {kind.name} kind is declared but its estimator module is not imported",
            hint="Load through tunesmith.load(), which imports every kind",
        )
    return kind.open


def _check_options(kind: Kind, options: dict[str, Any]) -> None:
    for key in options:
        if key not in kind.options:
            takes = ", ".join(f"{o}=" for o in kind.options) or "no keywords"
            raise ConfigError(
                f"{key}= does not apply to this folder, which holds a {kind.name} model (it takes {takes})",
                key=key,
                hint=f"Leave {key} out for this model",
            )
