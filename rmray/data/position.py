"""Where an epoch stands, in rows: what lets a run resume on another number of workers exactly.

The order rule (:mod:`rmray.data.stream`) numbers the kept train rows of a pass ``0, 1, 2, ...`` (their
``ordinal``, a pure function of the data) and cuts them into windows of ``world x rows_per_window``.
With the same world a position is a count of micro-batches: the resumed pass skips whole windows, then
the micro-batches already trained. With another world the windows fall elsewhere, so a checkpoint also
records the *set* of ordinals the epoch has trained, as sorted ``[start, end)`` ranges, and a pass
resumed on another world reads the epoch's rows minus that set, cut by the rule for the new world.

The set is cheap to record: every window before the current one is done on every rank, so it is
``[0, first ordinal of the current window)``, plus what the ranks took of the current window (a
length-grouped window is taken in no particular order), plus what a previous resume had excluded.

Example: 2 ranks, windows of 4 rows. At a checkpoint inside window ``[4, 8)`` rank 0 took ordinals
``4, 6`` and rank 1 ``5``: the set is ``[0, 4) + {4, 5, 6}`` = ``[[0, 7]]``, and one worker resumes on
ordinals ``7, 8, ...``. Had rank 0 taken only ``6`` (length grouping picks any order), the set is
``[[0, 4], [5, 7]]`` and row 4 is trained after the resume.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

Ranges = list  # [[start, end), ...] sorted, disjoint, not touching


def merge(ranges: Iterable) -> Ranges:
    """Sorted, disjoint ``[start, end)`` ranges covering what ``ranges`` cover."""
    out: Ranges = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def of_ordinals(ordinals: Iterable[int]) -> Ranges:
    """The ranges of a set of ordinals."""
    return merge([o, o + 1] for o in ordinals)


def contains(ranges: Ranges, ordinals: np.ndarray) -> np.ndarray:
    """A boolean mask: which of ``ordinals`` fall in ``ranges``."""
    if not ranges:
        return np.zeros(len(ordinals), dtype=bool)
    starts = np.asarray([a for a, _ in ranges])
    ends = np.asarray([b for _, b in ranges])
    at = np.searchsorted(starts, ordinals, side="right") - 1
    return (at >= 0) & (ordinals < ends[np.clip(at, 0, None)])


def count(ranges: Ranges) -> int:
    return sum(b - a for a, b in ranges)


def trained_set(excluded: Ranges, shares: list[tuple[int | None, list[int]]]) -> Ranges:
    """The epoch's trained ordinals at a checkpoint: what the pass excluded (a previous resume's set),
    everything before the current window, and what each rank took of it. ``shares``: every rank's
    ``(first ordinal of its share of the current window, ordinals it took there)``."""
    firsts = [first for first, _ in shares if first is not None]
    before = [[0, min(firsts)]] if firsts else []
    return merge(list(excluded) + before + of_ordinals(o for _, took in shares for o in took))


class RankPosition:
    """One rank's place in its current window, for :func:`trained_set` at a checkpoint."""

    def __init__(self):
        self.first: int | None = None
        self.took: list[int] = []

    def follow(self, windows: Iterator[dict]) -> Iterator[dict]:
        """Pass the rank's windows through, noting each one's first ordinal as it starts. The batches of a
        window are all yielded before the next window is pulled, so a batch belongs to the latest one."""
        for window in windows:
            ordinals = window["ordinal"]
            self.first, self.took = (int(ordinals.min()) if len(ordinals) else None), []
            yield window

    def took_batch(self, batch: dict) -> None:
        self.took.extend(int(o) for o in batch["ordinal"])

    def share(self) -> tuple[int | None, list[int]]:
        return self.first, list(self.took)
