"""The record of an epoch's trained rows: ordinal ranges, by hand-worked examples (no Ray)."""

import numpy as np

from rmray.data.position import RankPosition, contains, count, merge, of_ordinals, trained_set


def test_ranges_merge_touching_and_overlapping_spans_and_answer_membership():
    assert merge([[5, 7], [0, 4], [4, 5], [9, 10], [9, 9]]) == [[0, 7], [9, 10]]
    assert of_ordinals([7, 1, 2, 3]) == [[1, 4], [7, 8]]
    assert contains([[0, 4], [6, 8]], np.arange(10)).tolist() == [True] * 4 + [False, False, True, True, False, False]
    assert contains([], np.arange(3)).tolist() == [False] * 3
    assert count([[0, 4], [6, 8]]) == 6


def test_the_trained_set_is_the_windows_before_plus_what_each_rank_took_plus_what_was_excluded():
    # 2 ranks, window [4, 8): rank 0 took 4 and 6, rank 1 took 5 -> [0, 4) + {4, 5, 6}
    assert trained_set([], [(4, [4, 6]), (5, [5])]) == [[0, 7]]
    # length grouping: rank 0 took only 6 -> 4 is still to train
    assert trained_set([], [(4, [6]), (5, [5])]) == [[0, 4], [5, 7]]
    # a remainder pass that excluded [10, 12) keeps excluding it; its current window starts at 7
    assert trained_set([[0, 7], [10, 12]], [(7, [7]), (8, [])]) == [[0, 8], [10, 12]]
    # no window begun on any rank: only what was excluded
    assert trained_set([[2, 3]], [(None, []), (None, [])]) == [[2, 3]]


def test_a_rank_position_follows_its_windows_and_the_batches_it_took_there():
    position = RankPosition()
    windows = [{"ordinal": np.array([4, 6, 8])}, {"ordinal": np.array([12, 14])}]
    seen = []
    for window in position.follow(iter(windows)):
        seen.append(position.share())
        position.took_batch({"ordinal": window["ordinal"][:1]})
    assert seen == [(4, []), (12, [])]
    assert position.share() == (12, [12])
