"""Recommendation from interaction logs: reading logs, splitting them for top-N evaluation,
and full-ranking metrics.

The modules here need only numpy, scipy and pandas; models live in their own modules and are
not imported by this package.
"""

from tunesmith.recsys.data import Interactions, k_core, read_features, read_interactions
from tunesmith.recsys.metrics import evaluate_ranking, popularity_percentile, ranking_metrics, target_ranks, top_k
from tunesmith.recsys.split import HoldOut, RecSplit, leave_last_out, random_ratio, time_cut

__all__ = [
    "HoldOut",
    "Interactions",
    "RecSplit",
    "evaluate_ranking",
    "k_core",
    "leave_last_out",
    "popularity_percentile",
    "random_ratio",
    "ranking_metrics",
    "read_features",
    "read_interactions",
    "target_ranks",
    "time_cut",
    "top_k",
]
