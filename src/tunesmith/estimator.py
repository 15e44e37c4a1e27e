"""Deprecated: the text estimator moved to :mod:`tunesmith.estimators.text`.

``from tunesmith.estimator import FineTuner`` (and the other names below) still works for
one release, with a :class:`DeprecationWarning` naming the new home:

* ``FineTuner`` -> :class:`tunesmith.estimators.text.FineTuner`
* ``load`` -> :func:`tunesmith.kinds.load` (``tunesmith.load``)
* ``embed_texts`` -> :func:`tunesmith.backbones.embed.embed_texts`
* ``default_threads``, ``set_trainable_all`` -> :mod:`tunesmith.train.threads`
* ``_restore_label_values`` -> :func:`tunesmith.data.schema.restore_label_values`
* ``FORMAT_VERSION`` -> :data:`tunesmith.estimators.text_meta.TEXT_FORMAT_VERSION`
* ``_progress`` -> :func:`tunesmith.progress.progress`
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED: dict[str, tuple[str, str]] = {
    "FineTuner": ("tunesmith.estimators.text", "FineTuner"),
    "DataLike": ("tunesmith.estimators.text", "DataLike"),
    "load": ("tunesmith.kinds", "load"),
    "embed_texts": ("tunesmith.backbones.embed", "embed_texts"),
    "run_batches": ("tunesmith.backbones.embed", "run_batches"),
    "default_threads": ("tunesmith.train.threads", "default_threads"),
    "set_trainable_all": ("tunesmith.train.threads", "set_trainable_all"),
    "_is_secondary_process": ("tunesmith.train.threads", "is_secondary_process"),
    "_restore_label_values": ("tunesmith.data.schema", "restore_label_values"),
    "FORMAT_VERSION": ("tunesmith.estimators.text_meta", "TEXT_FORMAT_VERSION"),
    "_version": ("tunesmith.estimator", "_installed_version"),
    "_progress": ("tunesmith.estimator", "_ticking_progress"),
}


def _installed_version() -> str:
    """The installed tunesmith version (``tunesmith._version.__version__``)."""
    from tunesmith._version import __version__

    return __version__


class _Ticks:
    """The former private bar's interface (``with _progress(...) as tick: tick()``) over the shared one."""

    def __init__(self, description: str, total: int, enabled: bool) -> None:
        from tunesmith.progress import progress

        self._context = progress(description, total, enabled=enabled)

    def __enter__(self) -> Any:
        bar = self._context.__enter__()
        return lambda: bar.advance(1)

    def __exit__(self, *exc: Any) -> Any:
        return self._context.__exit__(*exc)


def _ticking_progress(description: str, total: int, *, enabled: bool) -> Any:
    return _Ticks(description, total, enabled)


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _MOVED[name]
    except KeyError:
        raise AttributeError(f"module 'tunesmith.estimator' has no attribute {name!r}") from None
    new = {"_progress": "tunesmith.progress.progress", "_version": "tunesmith._version.__version__"}.get(
        name, f"{module}.{attribute}"
    )
    warnings.warn(
        f"tunesmith.estimator.{name} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=2,
    )
    if module == __name__:
        return globals()[attribute]
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return sorted(_MOVED)
