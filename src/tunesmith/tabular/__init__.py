"""Tabular and mixed-row (text + tabular) models: LightGBM, a neural net, or their average.

::

    from tunesmith.tabular import TabularFineTuner
    model = TabularFineTuner(target="income").fit(train, test=test)
    model.candidates_   # validation (and test) metrics of lightgbm, neural and ensemble
    model.save("income-model")
    TabularFineTuner.load("income-model").predict(rows)

LightGBM is imported only when a booster is trained or loaded.
"""

from tunesmith.tabular.estimator import TabularFineTuner
from tunesmith.tabular.neural import TabularNet
from tunesmith.tabular.preprocess import TabularPreprocessor

__all__ = ["TabularFineTuner", "TabularNet", "TabularPreprocessor"]
