"""Length-grouped batching: batches of similar-length pairs, in random order.

Sorting inside windows of ``window`` batches (not the whole epoch) keeps the data order random at
the large scale while most padding disappears; the batch order inside each window is shuffled so
a run does not see short pairs first and long ones last. Every index appears exactly once.
"""

from __future__ import annotations

import random
from typing import Sequence


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Split one window of rows into batches of ``batch_size`` by length (longest first), shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches
