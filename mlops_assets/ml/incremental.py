"""Exact incremental ridge fits: per-series sufficient statistics updated in O(new rows).

A ridge series' fit (``fast_ridge``: ``StandardScaler`` + ``Ridge``) depends on its training
rows only through the augmented moment matrix ``[X | 1 | y]' [X | 1 | y]``, whose ``[p, p]``
entry is the row count. ``RidgeMoments`` keeps that matrix for S series at once (stacked
``[S, p+2, p+2]``): ``update`` adds new rows, ``downdate`` removes rows that leave a bounded
training window, both grouped by series in one vectorised pass (``np.add.reduceat`` over rows
laid out per series as batched matrix products, no Python loop per series), and ``solve`` returns every series' scaler and
ridge (``fast_ridge.RidgeArrays``), the same as ``fast_ridge.fit_ridge`` on that series'
current rows to ~1e-12 relative (tested to 1e-9 over 365 daily steps).

Numerical care: moments of raw values lose precision when the mean is large against the
spread (sales of 1e6 that move by 1e3: ``cov = M - n mean mean'`` cancels ~6 digits, and every
update/downdate adds rounding of the size of ``mean**2``, not of the variance). The moments are
therefore kept of values centred on a fixed per-series ``shift`` (features then target: the
means of the rows a series' statistics were built from, ``from_rows``). The shift never moves
between builds: changing it would need the same cancelling transform. Each update and downdate
then adds rounding of the size of the centred values, and ``solve`` adds the shift back to the
means only. The shift is reset by each full refit (``model.refit.full_every_days``, below), so
a series whose level drifts far from its shift for a year still stays within ~1e-12; a full
refit reads the window anyway to backtest the other families.

Rows folded in must be exactly the rows ``fitting.fit_series`` fits on (complete feature rows
of the training window: all but the last ``spec.holdout`` periods); the caller passes them.

How it is stored and used:

- Spec: ``model.refit: {full_every_days: N}`` (``spec.RefitSpec``; only for a ridge fitted in
  closed form, alone: no model zoo). Planned: ``window_periods`` to bound the training window,
  which ``fitting.fit_series`` must honour on full refits before the spec may expose it (the
  rows leaving it are then ``downdate``d here).
- Model set: each run stores every ridge series' statistics in
  ``<folder>/ridge_stats.parquet`` (``ridge_stats.split_stats``), the manifest keeping
  ``stats_artifact``; out of the manifest so that serving's manifest reads stay small.
- Runs between full refits (``daily_refit.refresh``, ``domain.incremental_run``): ``update``
  with the rows that entered each window, ``solve``, and a backtest on a recent window; a full
  refit rebuilds the statistics (``batch_ridge``: the moments the batch fit solved), which
  resets every shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mlops_assets.ml.fast_ridge import RidgeArrays, augmented, solve_moments


def _grouped_outer(
    X: np.ndarray, y: np.ndarray, index: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """``[S, p+2, p+2]``: the sum of ``a[r] a[r]'`` over the rows r of each series, where
    ``a[r] = [X[r] - shift_x | 1 | y[r] - shift_y]`` of the row's series.

    One matrix product per series on its rows, centred into a reused buffer (rows of a laid
    out frame are grouped by series already: no sort, no copy of every row at once). A
    series' product depends on its own rows only, never on the other series of the batch, so
    its moments are the same bits whichever batch it is trained in.
    """
    n_series, p = len(shift), X.shape[1]
    q = p + 2
    out = np.zeros((n_series, q, q))
    if len(index) == 0:
        return out
    if not bool(np.all(index[1:] >= index[:-1])):
        order = np.argsort(index, kind="stable")
        X, y, index = X[order], y[order], index[order]
    counts = np.bincount(index, minlength=n_series)
    starts = np.cumsum(counts) - counts
    buf = np.empty((int(counts.max()), q))
    for s in np.flatnonzero(counts).tolist():
        lo, n = int(starts[s]), int(counts[s])
        a = buf[:n]
        np.subtract(X[lo : lo + n], shift[s, :p], out=a[:, :p])
        a[:, p] = 1.0
        np.subtract(y[lo : lo + n], shift[s, p], out=a[:, p + 1])
        out[s] = a.T @ a
    return out


def _grouped_mean(values: np.ndarray, index: np.ndarray, n_series: int) -> np.ndarray:
    """``[n_series, k]`` mean of each series' rows of ``values`` (0 for a series with none)."""
    counts = np.maximum(np.bincount(index, minlength=n_series), 1)
    sums = [np.bincount(index, weights=col, minlength=n_series) for col in values.T]
    return np.column_stack(sums) / counts[:, None]


@dataclass
class RidgeMoments:
    """Sufficient statistics of S series' ridge fits: centred augmented moments and shifts.

    Attributes:
        shift: ``[S, p+1]`` the constants each series' features and target are centred on.
        moments: ``[S, p+2, p+2]`` ``A'A`` of ``A = [X - shift_x | 1 | y - shift_y]`` over each
            series' current rows (``moments[:, p, p]`` is the row count).
    """

    shift: np.ndarray
    moments: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.shift.shape[1] - 1)

    @property
    def n(self) -> np.ndarray:
        """``[S]`` rows currently folded into each series."""
        p = self.n_features
        return np.rint(self.moments[:, p, p]).astype(np.int64)

    @classmethod
    def from_rows(
        cls, X: np.ndarray, y: np.ndarray, index: np.ndarray, n_series: int
    ) -> RidgeMoments:
        """Statistics of every series' rows, centred on those rows' means.

        Args:
            X: ``[m, p]`` feature rows of all series.
            y: ``[m]`` their targets.
            index: ``[m]`` the series (0..n_series-1) of each row, in any order.
            n_series: S.
        """
        index = np.asarray(index, dtype=np.int64)
        p = X.shape[1]
        shift = np.column_stack(
            [_grouped_mean(X, index, n_series), _grouped_mean(y[:, None], index, n_series)]
        )
        stats = cls(shift, np.zeros((n_series, p + 2, p + 2)))
        stats.update(X, y, index)
        return stats

    def _centred(self, X: np.ndarray, y: np.ndarray, index: np.ndarray) -> np.ndarray:
        a = augmented(X, y)
        shift = np.take(self.shift, index, axis=0)
        p = self.n_features
        a[:, :p] -= shift[:, :p]
        a[:, p + 1] -= shift[:, p]
        return a

    def _add(self, X: np.ndarray, y: np.ndarray, index: np.ndarray, sign: float) -> None:
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            return
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if len(index) <= len(self.shift) and len(np.unique(index)) == len(index):
            a = self._centred(X, y, index)  # at most one row per series: no grouping
            self.moments[index] += sign * (a[:, :, None] * a[:, None, :])
            return
        self.moments += sign * _grouped_outer(X, y, index, self.shift)

    def update(self, X: np.ndarray, y: np.ndarray, index: np.ndarray) -> None:
        """Fold rows in, in place: ``X [m, p]``, ``y [m]``, ``index [m]`` (their series)."""
        self._add(X, y, index, 1.0)

    def downdate(self, X: np.ndarray, y: np.ndarray, index: np.ndarray) -> None:
        """Take out, in place, rows that were folded in (that left the training window)."""
        self._add(X, y, index, -1.0)

    def solve(self, alpha: float, series: np.ndarray | None = None) -> RidgeArrays:
        """Every series' (or ``series``') scaler and ridge; each needs at least one row.

        Raises:
            ValueError: A series has no rows.
        """
        shift, moments = self.shift, self.moments
        if series is not None:
            shift, moments = shift[series], moments[series]
        p = self.n_features
        if (moments[:, p, p] < 0.5).any():
            raise ValueError("a series has no rows to fit on")
        return solve_moments(moments, alpha, shift)

    def upper(self) -> np.ndarray:
        """``[S, (p+2)(p+3)/2]`` each series' moments, upper triangle row by row."""
        q = self.moments.shape[1]
        rows, cols = np.triu_indices(q)
        return self.moments[:, rows, cols]

    def to_table(self, series_ids: list[str]) -> pa.Table:
        """One row per series: series_id, n, shift and the moments' upper triangle."""
        return pa.table(
            {
                "series_id": pa.array(series_ids, pa.string()),
                "n": pa.array(self.n, pa.int64()),
                "shift": _fixed_list(self.shift),
                "moments": _fixed_list(self.upper()),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> RidgeMoments:
        """The statistics ``to_table`` (or a stats file) holds, in its row order."""
        return cls.from_upper(_matrix(table["shift"]), _matrix(table["moments"]))

    @classmethod
    def from_upper(cls, shift: np.ndarray, upper: np.ndarray) -> RidgeMoments:
        """Statistics from shifts and moments' upper triangles (``upper``)."""
        q = shift.shape[1] + 1
        rows, cols = np.triu_indices(q)
        moments = np.zeros((len(shift), q, q))
        moments[:, rows, cols] = upper
        moments[:, cols, rows] = upper
        return cls(shift, moments)


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values).ravel(), pa.float64())
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A column of equal-length float lists (fixed-size or not, no nulls) as a matrix."""
    arr = column.combine_chunks()
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), -1)
