"""Padding-aware cutting of length-sorted rows into model calls."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tunesmith.export.chunking import length_chunks


def test_a_long_tail_gets_its_own_call_and_equal_lengths_stay_together() -> None:
    # One call pads everything to 100 (4 x 100 + 16); two calls cost 3 x 5 + 16 + 100 + 16.
    assert length_chunks(np.array([5, 5, 5, 100]), 64) == [(0, 3), (3, 4)]
    assert length_chunks(np.full(40, 12), 64) == [(0, 40)]
    capped = length_chunks(np.full(40, 12), 16)  # no padding to save: as few calls as the cap allows
    assert len(capped) == 3 and all(b - a <= 16 for a, b in capped)
    assert length_chunks(np.array([], dtype=np.int64), 8) == []
    with pytest.raises(ValueError, match="ascending"):
        length_chunks(np.array([3, 1]), 8)


@pytest.mark.parametrize("n", [1, 7, 32, 65, 200])
def test_chunks_cover_every_row_once_and_beat_fixed_batches(n: int) -> None:
    lengths = np.sort(np.random.default_rng(n).integers(5, 80, n))
    chunks = length_chunks(lengths, 32)
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a < b and b - a <= 32 for a, b in chunks)
    assert all(chunks[i][1] == chunks[i + 1][0] for i in range(len(chunks) - 1))

    def cost(parts: list[tuple[int, int]]) -> float:
        return sum((b - a) * lengths[b - 1] + 16 for a, b in parts)

    fixed = [(s, min(s + 32, n)) for s in range(0, n, 32)]
    assert cost(chunks) <= cost(fixed)
    if n <= 12:  # no cutting of the rows into chunks of at most 32 is cheaper (every cut set tried)
        every = (
            [(a, b) for a, b in itertools.pairwise((0, *cuts, n))]
            for k in range(n)
            for cuts in itertools.combinations(range(1, n), k)
        )
        assert cost(chunks) == min(cost(parts) for parts in every if all(b - a <= 32 for a, b in parts))
