"""Closed-form ridge: ``StandardScaler`` + ``Ridge`` fitted without scikit-learn's per-call cost.

The same standardise-then-solve that ``StandardScaler`` + ``Ridge(solver="cholesky")`` performs,
on numpy arrays, returning a genuine fitted ``Pipeline`` (tested equal to ``Pipeline.fit`` to
1e-9). It costs ~0.1 ms instead of ~2 ms of input validation per series.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# The parameters this path honours; a spec setting any other one goes through Pipeline.fit.
PARAMS = frozenset({"alpha", "random_state"})


def fit_ridge(X: np.ndarray, y: np.ndarray, params: dict[str, Any]) -> Pipeline:
    """A fitted ``[StandardScaler, Ridge]`` Pipeline; ``params`` may hold only ``PARAMS``."""
    n, p = X.shape
    # One matrix product gives every moment: [X | 1 | y]' [X | 1 | y].
    augmented = np.empty((n, p + 2))
    augmented[:, :p] = X
    augmented[:, p] = 1.0
    augmented[:, p + 1] = y
    moments = augmented.T @ augmented
    mean = moments[:p, p] / n
    y_mean = moments[p, p + 1] / n
    cov = moments[:p, :p] - n * np.outer(mean, mean)
    var = np.maximum(np.diag(cov) / n, 0.0)
    # StandardScaler's rule for constant features: leave them unscaled.
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    var[constant] = 0.0
    scale = np.sqrt(var)
    scale[constant | (scale == 0)] = 1.0
    gram = cov / np.outer(scale, scale)
    gram[constant, :] = 0.0
    gram[:, constant] = 0.0
    alpha = float(params.get("alpha", 1.0))
    gram.flat[:: p + 1] += alpha
    rhs = (moments[:p, p + 1] - n * mean * y_mean) / scale
    rhs[constant] = 0.0
    coef = np.linalg.solve(gram, rhs)

    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_features_in_, scaler.n_samples_seen_ = p, np.int64(n)
    ridge = Ridge(alpha=alpha, random_state=params.get("random_state", 0))
    ridge.coef_, ridge.intercept_ = coef, float(y_mean)
    ridge.n_features_in_, ridge.solver_, ridge.n_iter_ = p, "cholesky", None
    return Pipeline([("scale", scaler), ("model", ridge)])
