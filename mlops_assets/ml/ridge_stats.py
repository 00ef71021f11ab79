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
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.ml.features import SeriesFrame, feature_matrix, feature_names, positions
from mlops_assets.ml.incremental import RidgeMoments
from mlops_assets.ml.spec import DatasetSpec

STATS_FILE = "ridge_stats.parquet"
FIELDS = [
    pa.field("ridge_shift", pa.list_(pa.float64())),
    pa.field("ridge_moments", pa.list_(pa.float64())),
]


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


def record_columns(frame: SeriesFrame, spec: DatasetSpec, chosen: np.ndarray) -> list[dict]:
    """Per series of a laid-out batch, ``FIELDS`` as record values: its statistics where
    ``chosen`` (its model is the spec's ridge), else None."""
    X = feature_matrix(frame, spec)
    stats = training_moments(frame, X, spec)
    upper = stats.upper()
    names = [f.name for f in FIELDS]
    return [
        dict(zip(names, (stats.shift[j].tolist(), upper[j].tolist()), strict=True))
        if chosen[j] and stats.n[j] > 0
        else dict.fromkeys(names)
        for j in range(frame.n_series)
    ]


def split_stats(
    manifest: pa.Table, folder: str, spec: DatasetSpec
) -> tuple[pa.Table, list[tuple[str, bytes]]]:
    """``manifest`` without ``FIELDS`` but with ``stats_artifact``, and the stats file to write
    (none when no series has statistics). A manifest without ``FIELDS`` is returned as is.

    The file's schema metadata names the features (in order) and the alpha the statistics
    were built for (``stats_signature``): statistics of other features cannot be updated.
    """
    names = [f.name for f in FIELDS]
    if names[0] not in manifest.column_names:
        return manifest, []
    has = pc.is_valid(manifest[names[0]])
    stats = manifest.filter(has).select(["series_id", *names])
    stats = stats.rename_columns(["series_id", "shift", "moments"])
    path = f"{folder}/{STATS_FILE}"
    artifact = pc.if_else(has, pa.scalar(path), pa.scalar(None, pa.string()))
    out = manifest.drop_columns(names).append_column("stats_artifact", artifact)
    if stats.num_rows == 0:
        return out, []
    buf = io.BytesIO()
    pq.write_table(stats.replace_schema_metadata(stats_signature(spec)), buf, compression="zstd")
    return out, [(path, buf.getvalue())]


def stats_signature(spec: DatasetSpec) -> dict[str, str]:
    """What a stats file's statistics depend on: the feature names and the ridge's alpha."""
    alpha = float(spec.model.params.get("alpha", 1.0))
    return {"features": json.dumps(feature_names(spec)), "alpha": repr(alpha)}


def read_stats(data: bytes, spec: DatasetSpec) -> tuple[list[str], RidgeMoments]:
    """The series ids and statistics of a stats file ``split_stats`` wrote.

    Raises:
        ValueError: The file was written for other features or another alpha than ``spec``'s
            (a full refit is due).
    """
    table = pq.read_table(io.BytesIO(data))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta != stats_signature(spec):
        raise ValueError(f"ridge statistics of {meta} do not match the spec's features/alpha")
    return table["series_id"].to_pylist(), RidgeMoments.from_table(table)
