"""Cutting length-sorted rows into model calls that waste the fewest padded tokens.

A batch is padded to its longest row. Rows sorted by length and cut at fixed counts still pad
a 10-token review to the 60 tokens of the longest one in its batch: on Rotten Tomatoes a batch
of 32 concurrent requests is about half padding. Cutting the sorted rows where the lengths
jump costs one more model call per cut and saves the padding; :func:`length_chunks` finds the
cuts that minimise padded tokens plus a fixed price per call.
"""

from __future__ import annotations

import numpy as np

CALL_TOKENS = 16
"""What one more model call costs, in tokens: ONNX Runtime's fixed cost per call (about 0.1 ms
for MiniLM on a CPU core) against about 20 µs per token in a batch."""


def length_chunks(lengths: np.ndarray, max_rows: int, call_tokens: int = CALL_TOKENS) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ascending ``lengths`` into chunks of at most ``max_rows``.

    The cuts minimise ``sum(rows * longest + call_tokens)`` over the chunks: equal lengths
    stay together, a long tail gets its own call. Dynamic programming over the sorted rows,
    ``best[stop]`` being the cheapest cutting of the first ``stop`` rows; plain Python is as
    fast as a numpy version at 256 rows or more and four times faster at a served batch's 32.
    """
    n = len(lengths)
    if n == 0:
        return []
    ordered = np.asarray(lengths, dtype=np.float64)
    if np.any(np.diff(ordered) < 0):
        raise ValueError("lengths must be sorted in ascending order")
    values = ordered.tolist()
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)  # where the last chunk of best[stop] starts
    for stop in range(1, n + 1):
        longest = values[stop - 1]
        for start in range(max(0, stop - max_rows), stop):
            cost = best[start] + call_tokens + (stop - start) * longest
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    chunks: list[tuple[int, int]] = []
    stop = n
    while stop > 0:
        chunks.append((cut[stop], stop))
        stop = cut[stop]
    return chunks[::-1]
