"""Ridge sufficient statistics of a batch's training windows: the rows ``fit_series`` fits on.

``fitting.fit_series`` fits a series on its complete feature rows (finite features and target)
among all but its last ``spec.holdout`` periods. ``training_moments`` folds exactly those rows
of every series of a laid-out batch into ``incremental.RidgeMoments`` in one pass, so a full
refit can store them beside the models; ``entering_rows`` are the rows a batch one period
longer adds to each window (the period leaving the holdout), what a daily step folds in.
"""

from __future__ import annotations

import numpy as np

from mlops_assets.ml.features import SeriesFrame, positions
from mlops_assets.ml.incremental import RidgeMoments
from mlops_assets.ml.spec import DatasetSpec


def _complete(frame: SeriesFrame, X: np.ndarray) -> np.ndarray:
    return np.isfinite(X).all(axis=1) & np.isfinite(frame.target)


def _series_index(frame: SeriesFrame) -> np.ndarray:
    return np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))


def training_rows(frame: SeriesFrame, X: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Row numbers (ascending) of every series' training rows in ``frame``/``X``."""
    split = np.diff(frame.offsets) - spec.holdout
    keep = _complete(frame, X) & (positions(frame.offsets) < split[_series_index(frame)])
    return np.flatnonzero(keep)


def entering_rows(frame: SeriesFrame, X: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Row numbers of each series' last training period, where it is a complete row.

    With ``frame`` one period longer than the batch the statistics were built on, these are
    the rows that period's step folds in.
    """
    split = np.diff(frame.offsets) - spec.holdout
    last = frame.offsets[:-1] + split - 1
    last = last[split >= 1]
    return last[_complete(frame, X)[last]]


def training_moments(frame: SeriesFrame, X: np.ndarray, spec: DatasetSpec) -> RidgeMoments:
    """Every series' training rows folded into fresh statistics (centred on their means)."""
    rows = training_rows(frame, X, spec)
    index = _series_index(frame)
    return RidgeMoments.from_rows(X[rows], frame.target[rows], index[rows], frame.n_series)


def series_of(frame: SeriesFrame, rows: np.ndarray) -> np.ndarray:
    """The series (0..n_series-1) of each of ``rows``."""
    return np.searchsorted(frame.offsets, rows, side="right") - 1
