"""Shared fixtures: tiny labeled data, offline settings, one thread."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import pytest
import torch

torch.set_num_threads(1)

POSITIVE = [
    "great fun movie",
    "best film i love it",
    "good story and fine acting",
    "love the plot, great",
    "fun and good",
    "a great great film",
]
NEGATIVE = [
    "awful boring movie",
    "worst film i hate it",
    "bad story and dull acting",
    "hate the plot, awful",
    "boring and bad",
    "a dull dull film",
]


def make_reviews(n: int = 48, seed: int = 0, *, users: bool = False) -> pd.DataFrame:
    """A tiny, learnable sentiment set: positive and negative templates with noise words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        pool = POSITIVE if label == "pos" else NEGATIVE
        text = pool[rng.integers(len(pool))] + " " + " ".join(rng.choice(["the", "a", "it", "this"], size=2))
        row = {"text": text, "label": label}
        if users:
            row["user"] = f"u{i % 8}"
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def reviews() -> pd.DataFrame:
    return make_reviews()


@pytest.fixture
def fast_params(tmp_path) -> dict:
    """Settings for a fit that takes about a second on the tiny backbone."""
    return {
        "backbone": "tiny-text",
        # Tiny data has few rows per class, where strategy="auto" would pick fewshot.
        "strategy": "full",
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "max_length": 32,
        "progress": False,
        "runs_dir": str(tmp_path / "runs"),
        "num_threads": 1,
    }
