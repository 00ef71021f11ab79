"""Ridge sufficient statistics of a batch's training windows: the rows ``fit_series`` fits on.

``fitting.fit_series`` fits a series on its complete feature rows (finite features and target)
among all but its last ``spec.holdout`` periods. ``training_moments`` folds exactly those rows
of every series of a laid-out batch into ``incremental.RidgeMoments`` in one pass, so a full
refit can store them beside the models; ``entering_rows`` are the rows a batch one period
longer adds to each window (the period leaving the holdout), what a daily step folds in.

With ``model.refit`` in the spec, each training record of a series whose chosen model is the
spec's ridge carries its statistics (``FIELDS``: ``record_columns``); ``split_stats`` moves
them out of a run's manifest into ``<folder>/ridge_stats.parquet`` (written with the packs),
the manifest keeping only ``stats_artifact``, the file that holds the series' row (carried
over by reference like the model bytes).

Besides the moments a series' row holds what a daily step (``daily_refit``) needs to stay equal
to a full refit: ``through``, the last period folded in (the training window's end), and the
MASE scale's sums over the periods before ``scale_since`` (``backtest.ScalePrefix``), a date
``scale_margin`` periods before the series' end, so a window of recent periods is enough to
backtest the refreshed model exactly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.ml import backtest, batch_ridge
from mlops_assets.ml.features import SeriesFrame, feature_matrix, feature_names, positions
from mlops_assets.ml.fitting import season_length
from mlops_assets.ml.incremental import RidgeMoments
from mlops_assets.ml.selection import stored_history
from mlops_assets.ml.spec import DatasetSpec

STATS_FILE = "ridge_stats.parquet"
FIELDS = [
    pa.field("ridge_shift", pa.list_(pa.float64())),
    pa.field("ridge_moments", pa.list_(pa.float64())),
    pa.field("ridge_through", pa.int64()),  # microseconds since the epoch
    pa.field("ridge_scale_since", pa.int64()),  # microseconds since the epoch
    pa.field("ridge_scale_sums", pa.list_(pa.float64())),
]
_COLUMNS = ["shift", "moments", "through", "scale_since", "scale_sums"]
FULL_REFIT_KEY = "full_refit_in"  # stats file metadata: the full refit the moments come from
CURATED_KEY = "curated_revisions"  # stats file metadata: the curated shards' revisions seen


@dataclass
class RidgeState:
    """What a stats file holds, one row per series (``ids``)."""

    ids: list[str]
    moments: RidgeMoments
    through: np.ndarray  # datetime64[us]: the last period folded in
    prefix: backtest.ScalePrefix  # the MASE scale's sums before each series' scale_since
    full_refit_in: str  # the version of the full refit the statistics were built in
    curated: dict[str, int]  # each curated shard's revision when they were written

    def take(self, rows: np.ndarray) -> RidgeState:
        """The rows ``rows`` of the state, in that order."""
        return RidgeState(
            [self.ids[i] for i in rows],
            RidgeMoments(self.moments.shift[rows], self.moments.moments[rows]),
            self.through[rows],
            backtest.ScalePrefix(
                self.prefix.since[rows], {k: v[rows] for k, v in self.prefix.sums.items()}
            ),
            self.full_refit_in,
            self.curated,
        )


def scale_margin(spec: DatasetSpec) -> int:
    """Periods before a series' end from which a daily step recomputes the MASE scale's sums:
    the backtest's folds and the history their forecasts need lie within them."""
    b = spec.backtest
    return stored_history(spec) + spec.horizon + (b.origins - 1) * b.step


def scale_prefix_since(frame: SeriesFrame, spec: DatasetSpec) -> np.ndarray:
    """Each series' ``scale_since``: ``scale_margin`` periods before its end (its first period
    for a shorter series; the epoch for an empty one)."""
    starts, ends = frame.offsets[:-1], frame.offsets[1:]
    since = np.full(frame.n_series, np.datetime64(0, "us"))
    has = ends > starts
    since[has] = frame.time[np.maximum(ends - scale_margin(spec), starts)[has]]
    return since


def scale_prefix(frame: SeriesFrame, spec: DatasetSpec) -> backtest.ScalePrefix:
    """Each series' ``scale_since`` and the MASE scale's sums before it, from a whole-history
    frame."""
    since = scale_prefix_since(frame, spec)
    lags = backtest.scale_lags(season_length(spec.frequency))
    return backtest.ScalePrefix(
        since, {lag: backtest.lag_sums(frame, lag, None, since) for lag in lags}
    )


def window_end(frame: SeriesFrame, spec: DatasetSpec) -> np.ndarray:
    """``[n_series]`` the time of each series' last training period (its row before the
    holdout; the epoch for a series with none)."""
    split = np.diff(frame.offsets) - spec.holdout
    rows = frame.offsets[:-1] + split - 1
    ok = split >= 1
    out = np.full(frame.n_series, np.datetime64(0, "us"))
    out[ok] = frame.time[rows[ok]]
    return out


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


def record_columns(
    frame: SeriesFrame,
    spec: DatasetSpec,
    chosen: np.ndarray,
    X: np.ndarray | None = None,
    fitted: batch_ridge.BatchMoments | None = None,
) -> list[dict]:
    """Per series of a laid-out batch (whole histories), ``FIELDS`` as record values: its
    statistics where ``chosen`` (its model is the spec's ridge), else None. ``X``: the
    frame's feature matrix, where the caller has it; ``fitted``: the moments the ridge was
    fitted from (``batch_ridge``: the same rows), which are then not computed again."""
    if fitted is not None:
        p = fitted.moments.n_features
        stats = RidgeMoments(
            np.zeros((frame.n_series, p + 1)), np.zeros((frame.n_series, p + 2, p + 2))
        )
        stats.shift[fitted.series] = fitted.moments.shift
        stats.moments[fitted.series] = fitted.moments.moments
        return stats_records(stats, window_end(frame, spec), scale_prefix(frame, spec), chosen)
    if X is None:
        X = feature_matrix(frame, spec)
    stats = training_moments(frame, X, spec)
    return stats_records(stats, window_end(frame, spec), scale_prefix(frame, spec), chosen)


def stats_records(
    stats: RidgeMoments,
    through: np.ndarray,
    prefix: backtest.ScalePrefix,
    chosen: np.ndarray,
) -> list[dict]:
    """``FIELDS`` as record values per series: its statistics where ``chosen``, else None."""
    upper = stats.upper()
    names = [f.name for f in FIELDS]
    sums = np.column_stack([prefix.sums[k] for k in sorted(prefix.sums)])
    t = through.astype("datetime64[us]").astype(np.int64)
    since = prefix.since.astype("datetime64[us]").astype(np.int64)
    n = stats.n
    return [
        dict(
            zip(
                names,
                (
                    stats.shift[j].tolist(),
                    upper[j].tolist(),
                    int(t[j]),
                    int(since[j]),
                    sums[j].tolist(),
                ),
                strict=True,
            )
        )
        if chosen[j] and n[j] > 0
        else dict.fromkeys(names)
        for j in range(len(chosen))
    ]


def split_stats(
    manifest: pa.Table,
    folder: str,
    spec: DatasetSpec,
    *,
    full_refit_in: str = "",
    curated: dict[str, int] | None = None,
) -> tuple[pa.Table, list[tuple[str, bytes]]]:
    """``manifest`` without ``FIELDS`` but with ``stats_artifact``, and the stats file to write
    (none when no series has statistics). A manifest without ``FIELDS`` is returned as is.

    The file's schema metadata names the features (in order), the alpha and the windows the
    statistics were built for (``stats_signature``): statistics of other features cannot be
    updated; and the full refit they come from and the curated shards' revisions they saw.
    """
    names = [f.name for f in FIELDS]
    if names[0] not in manifest.column_names:
        return manifest, []
    has = pc.is_valid(manifest[names[0]])
    stats = manifest.filter(has).select(["series_id", *names])
    stats = stats.rename_columns(["series_id", *_COLUMNS])
    path = f"{folder}/{STATS_FILE}"
    artifact = pc.if_else(has, pa.scalar(path), pa.scalar(None, pa.string()))
    out = manifest.drop_columns(names).append_column("stats_artifact", artifact)
    if stats.num_rows == 0:
        return out, []
    meta = {
        **stats_signature(spec),
        FULL_REFIT_KEY: full_refit_in,
        CURATED_KEY: json.dumps(curated or {}, sort_keys=True),
    }
    buf = io.BytesIO()
    pq.write_table(stats.replace_schema_metadata(meta), buf, compression="zstd")
    return out, [(path, buf.getvalue())]


def stats_signature(spec: DatasetSpec) -> dict[str, str]:
    """What a stats file's statistics depend on: the features, the ridge's alpha, and the
    windows (holdout, backtest, season) their rows and scale sums were chosen by."""
    alpha = float(spec.model.params.get("alpha", 1.0))
    b = spec.backtest
    windows = [spec.holdout, spec.horizon, b.origins, b.step, season_length(spec.frequency)]
    return {
        "features": json.dumps(feature_names(spec)),
        "alpha": repr(alpha),
        "windows": json.dumps(windows),
    }


def read_stats(data: bytes, spec: DatasetSpec) -> RidgeState:
    """The statistics of a stats file ``split_stats`` wrote.

    Raises:
        ValueError: The file was written for other features, another alpha or other windows
            than ``spec``'s (a full refit is due).
    """
    table = pq.read_table(pa.BufferReader(data))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    signature = stats_signature(spec)
    seen = {k: meta.get(k) for k in signature}
    if seen != signature:
        raise ValueError(f"ridge statistics built for {seen} do not match the spec's {signature}")
    sums = RidgeMoments.from_table(table)  # validates the shapes
    scale = _float_matrix(table["scale_sums"])
    lags = backtest.scale_lags(season_length(spec.frequency))
    return RidgeState(
        ids=table["series_id"].to_pylist(),
        moments=sums,
        through=_times(table["through"]),
        prefix=backtest.ScalePrefix(
            _times(table["scale_since"]),
            {lag: scale[:, 2 * i : 2 * i + 2] for i, lag in enumerate(lags)},
        ),
        full_refit_in=meta.get(FULL_REFIT_KEY, ""),
        curated={k: int(v) for k, v in json.loads(meta.get(CURATED_KEY, "{}")).items()},
    )


def _times(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.int64).astype("datetime64[us]")


def _float_matrix(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), -1)
