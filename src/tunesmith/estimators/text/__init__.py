"""The text kind: :class:`FineTuner` fine-tunes a pre-trained text backbone on a labeled table.

Importing this package registers the kind ``"text"`` in :mod:`tunesmith.estimators.registry`,
so :func:`tunesmith.load`, the CLI, export and serving find it. The modules follow the fit:
:mod:`.inputs` (what data is accepted), :mod:`.fitting` (the steps of ``fit``),
:mod:`.estimator` (the class: settings, fit, predict, score), :mod:`.record` (report and run
record) and :mod:`.folder` (the model folder); the metadata checks shared with the
predictors live in :mod:`tunesmith.estimators.text_meta`.
"""

from __future__ import annotations

from typing import Any

from tunesmith.estimators.registry import Kind, register
from tunesmith.estimators.text.estimator import FineTuner
from tunesmith.estimators.text.inputs import DataLike
from tunesmith.runs.trust import SafeFolder


def open_text(folder: SafeFolder, meta: dict[str, Any] | None, *, backbone: str | None = None) -> FineTuner:
    """The registry's loader: a text model from a folder already opened through the trust checks.

    ``backbone`` names the pre-trained backbone of a head-only or LoRA model whose metadata
    names a local folder (see :meth:`FineTuner.load`).
    """
    return FineTuner._from_opened(folder, meta, backbone=backbone)


KIND = register(
    Kind(
        name="text",
        estimator=FineTuner,
        open=open_text,
        options=("backbone",),
        summary="a pre-trained text encoder fine-tuned on labeled texts (classification or regression)",
        serving="predict",
    )
)

__all__ = ["KIND", "DataLike", "FineTuner", "open_text"]
