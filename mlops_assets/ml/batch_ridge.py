"""The closed-form ridge of every series of a batch at once: one pass of batched products.

``fitting.fit_series`` fits one series at a time (``fast_ridge.fit_ridge``: ~0.1 ms each plus
Python around it). For the spec's ridge with only closed-form params this module checks each
series' window the same way (``fitting.check_window``: the same statuses and reasons), then
folds every trainable series' training rows into ``incremental.RidgeMoments`` (centred on
each series' means) and solves them all at once (``fast_ridge.solve_moments``): the same
scaler and coefficients as a per-series fit (to ~1e-12 relative), and the moments are the
ridge statistics ``model.refit`` stores (``ridge_stats``), so storing them costs nothing more.
"""

from __future__ import annotations

import itertools
import time as _time
from dataclasses import dataclass

import numpy as np

from mlops_assets.ml.features import SeriesFrame
from mlops_assets.ml.fitting import (
    FAILED,
    TRAINED,
    SeriesFit,
    check_window,
    complete_rows,
    family_params,
)
from mlops_assets.ml.incremental import RidgeMoments


@dataclass(frozen=True)
class BatchMoments:
    """The moments of a batch's fitted series: ``series`` (batch index) -> ``moments`` row."""

    series: np.ndarray
    moments: RidgeMoments


def fit_batch(
    name: str, frame: SeriesFrame, X: np.ndarray, spec
) -> tuple[list[SeriesFit], BatchMoments]:
    """Every series of a regular batch fitted with the closed-form ridge ``name``.

    Returns:
        One fit record per series (``fit_series``'s statuses, reasons and windows; a model for
        the trained ones) and the moments of the series that were fitted.
    """
    started = _time.perf_counter()
    params = family_params(spec, name)
    off = frame.offsets.tolist()
    p = X.shape[1]
    fits: list[SeriesFit] = []
    ok, last, shifts, grams = [], [], [], []
    buf = np.empty((max(1, int(np.diff(frame.offsets).max(initial=1))), p + 2))
    complete = complete_rows(X, frame.target)  # once for the batch, not per series
    for i, (a, b) in enumerate(itertools.pairwise(off)):
        y = frame.target[a:b]
        fit, train = check_window(X[a:b], y, frame.time[a:b], spec, complete[a:b])
        fits.append(fit)
        if train is None:
            continue
        lo, n = int(train[0]), len(train)
        if int(train[-1]) - lo + 1 == n:  # complete rows are one run (the usual case): views
            xs, ys = X[a + lo : a + lo + n], y[lo : lo + n]
        else:
            xs, ys = X[a:b][train], y[train]
        shift = np.append(xs.mean(axis=0), ys.mean())
        rows = buf[:n]  # centred on the series' own means, as ``RidgeMoments.from_rows``
        np.subtract(xs, shift[:p], out=rows[:, :p])
        rows[:, p] = 1.0
        np.subtract(ys, shift[p], out=rows[:, p + 1])
        grams.append(rows.T @ rows)
        shifts.append(shift)
        ok.append(i)
        last.append(a + int(train[-1]))
    series = np.asarray(ok, dtype=np.int64)
    if not ok:
        empty = RidgeMoments(np.zeros((0, p + 1)), np.zeros((0, p + 2, p + 2)))
        return fits, BatchMoments(series, empty)
    moments = RidgeMoments(np.array(shifts), np.array(grams))
    arrays = moments.solve(float(params.get("alpha", 1.0)))
    predicted = ((X[last] - arrays.mean) / arrays.scale * arrays.coef).sum(axis=1)
    finite = np.isfinite(predicted + arrays.intercept) & np.isfinite(arrays.coef).all(axis=1)
    each = (_time.perf_counter() - started) / max(1, len(fits))
    for j, i in enumerate(ok):
        fit = fits[i]
        if finite[j]:
            fit.model, fit.status = arrays.pipeline(j, params), TRAINED
        else:
            fit.status, fit.reason = FAILED, "non-finite predictions on the training window"
    for fit in fits:
        fit.fit_seconds = each
    return fits, BatchMoments(series, moments)
