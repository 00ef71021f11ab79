"""A piece of a large drop is scored as two halves of whole series at once."""

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.jobs import drop_pieces
from mlops_assets.jobs.drop_pieces import _halves


def _piece(lengths: list[int]) -> tuple[pa.Table, np.ndarray]:
    keys = np.repeat([f"S{i}" for i in range(len(lengths))], lengths)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    return pa.table({"store": keys, "row": np.arange(len(keys))}), starts


@pytest.mark.skipif(drop_pieces.SCORING_THREADS < 2, reason="one core: pieces are not cut")
@pytest.mark.parametrize(
    ("lengths", "cut"),
    [
        ([3, 4, 2, 5, 6], 9),  # middle 10: the start at 9 is nearer than 14
        ([3, 4, 2, 1, 10], 10),  # middle 10 is a start
        ([1, 18, 1], 19),  # the nearest start past row 0
        ([19, 1], 19),  # two series, however uneven
    ],
)
def test_a_piece_is_cut_at_the_series_start_nearest_its_middle(lengths, cut):
    piece, starts = _piece(lengths)
    halves = _halves(piece, starts, min_rows=20)
    assert [h.num_rows for h in halves] == [cut, sum(lengths) - cut]
    assert pa.concat_tables(halves).equals(piece)
    first, second = (h["store"].to_pylist() for h in halves)
    assert not set(first) & set(second)  # whole series in each


def test_a_small_piece_or_a_single_series_stays_whole():
    piece, starts = _piece([3, 4, 2])
    assert _halves(piece, starts, min_rows=10) == [piece]
    one, starts = _piece([40])
    assert _halves(one, starts, min_rows=10) == [one]
