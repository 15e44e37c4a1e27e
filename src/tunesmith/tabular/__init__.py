"""Tabular and mixed-row (text + tabular) models: LightGBM, a neural net, or their average.

::

    from tunesmith.tabular import TabularFineTuner
    model = TabularFineTuner().fit(train, target="income", test_set=test)
    model.candidates_   # validation (and test) metrics of lightgbm, neural and ensemble
    model.save("income-model")
    TabularFineTuner.load("income-model").predict(rows)

The names load on first use, so the helper modules (preprocessing, the network, LightGBM
checks) import without the estimator. LightGBM is imported only when a booster is trained
or loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith._lazy import lazy_module

if TYPE_CHECKING:
    from tunesmith.tabular.estimator import TabularFineTuner
    from tunesmith.tabular.neural import TabularNet
    from tunesmith.tabular.preprocess import TabularPreprocessor

_LAZY = {
    "TabularFineTuner": "tunesmith.tabular.estimator",
    "TabularNet": "tunesmith.tabular.neural",
    "TabularPreprocessor": "tunesmith.tabular.preprocess",
}

__all__ = ["TabularFineTuner", "TabularNet", "TabularPreprocessor"]

__getattr__, __dir__ = lazy_module(__name__, _LAZY, globals())
