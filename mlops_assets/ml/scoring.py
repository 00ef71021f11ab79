"""Scoring rows of many series with their own models: the code batch and real-time scoring share.

A request row names a series (its key columns), a period (the time column) and the exogenous
features; it may carry the target where it is known (a batch drop with history). Features need
the targets before each row: they come from earlier rows of the same request and, before
those, from the series' *history tail* that training stored with its model. Rows whose features
are all known are predicted in one pass; a row that needs a target nobody sent (the second
period ahead, say) waits for the prediction of the period before it: forecasting is recursive.

Every row gets a prediction and the model version used, or an error code and message; one bad
row never fails the others. Nothing here reads storage: the caller passes ``model_for``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from mlops_assets.ml.features import (
    SeriesFrame,
    feature_matrix,
    feature_names,
    tail_length,
    to_series_frame,
)
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.training import _predict  # scaler + linear in numpy: ~50x less overhead
from mlops_assets.ml.tables import series_ids

UNKNOWN_SERIES = "unknown_series"
NO_MODEL = "no_model"
MISSING_FEATURE = "missing_feature"
INSUFFICIENT_HISTORY = "insufficient_history"
GAP = "gap_after_history"
DUPLICATE = "duplicate_row"
BAD_VALUE = "bad_value"


class RequestError(ValueError):
    """The request as a whole is unusable (not one row of it can be scored)."""


@dataclass(frozen=True)
class SeriesModel:
    """What scoring needs of one series: its model and the targets that precede scoring."""

    model: object  # a fitted scikit-learn Pipeline
    version: str
    history_end: str | None  # ISO date of the last period the tail covers
    tail: np.ndarray  # the last ``tail_length(spec)`` targets, oldest first


ModelLookup = Callable[[str], "SeriesModel | None | str"]


def required_columns(spec: DatasetSpec) -> list[str]:
    return [*spec.series_keys, spec.time, *spec.features.exogenous]


def _frame(requests: pa.Table | pd.DataFrame | list[dict], spec: DatasetSpec) -> pd.DataFrame:
    if isinstance(requests, pa.Table):
        df = requests.to_pandas()
    elif isinstance(requests, pd.DataFrame):
        df = requests.reset_index(drop=True)
    else:
        df = pd.DataFrame.from_records(requests)
    missing = [c for c in required_columns(spec) if c not in df.columns]
    if missing:
        raise RequestError(
            f"missing column(s) {missing}; each row needs {required_columns(spec)} "
            f"(and may carry {spec.target!r} where it is known)"
        )
    return df


def _period_after(end: str, spec: DatasetSpec) -> pd.Timestamp:
    return pd.date_range(start=pd.Timestamp(end), periods=2, freq=spec.frequency)[-1]


def score(
    requests: pa.Table | pd.DataFrame | list[dict],
    spec: DatasetSpec,
    model_for: ModelLookup,
) -> pd.DataFrame:
    """Predict every request row with its series' model.

    Args:
        requests: Rows with the spec's key, time and exogenous columns (target optional).
        spec: The dataset spec.
        model_for: Series id to its ``SeriesModel``; ``None`` for an unknown series, or a
            string saying why a known series has no usable model.

    Returns:
        One row per request row, in request order: ``series_id``, ``time``, ``prediction``,
        ``model_version``, ``error`` (a code) and ``message`` (None where scored).

    Raises:
        RequestError: A column every row needs is missing.
    """
    df = _frame(requests, spec)
    n = len(df)
    out = pd.DataFrame(
        {
            "series_id": pd.Series([None] * n, dtype=object),
            "time": pd.Series([None] * n, dtype=object),
            "prediction": np.full(n, np.nan),
            "model_version": pd.Series([None] * n, dtype=object),
            "error": pd.Series([None] * n, dtype=object),
            "message": pd.Series([None] * n, dtype=object),
        }
    )
    if n == 0:
        return out

    def fail(rows: np.ndarray, code: str, message: str | list[str]) -> None:
        out.loc[rows, "error"] = code
        out.loc[rows, "message"] = message

    keys = pa.table({k: pa.array(df[k].astype(str).to_numpy(object)) for k in spec.series_keys})
    ids = np.asarray(series_ids(keys, spec).to_pylist(), dtype=object)
    out["series_id"] = ids
    time = pd.to_datetime(df[spec.time], errors="coerce", format="ISO8601")
    out["time"] = time.dt.strftime("%Y-%m-%d").where(time.notna(), None)
    target = (
        pd.to_numeric(df[spec.target], errors="coerce").to_numpy(float)
        if spec.target in df.columns
        else np.full(n, np.nan)
    )
    exog = {
        c: pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in spec.features.exogenous
    }

    bad_time = time.isna().to_numpy()
    if bad_time.any():
        fail(np.flatnonzero(bad_time), BAD_VALUE, f"{spec.time!r} is not a date")
    dup = pd.Series(list(zip(ids, time, strict=True))).duplicated(keep=False).to_numpy() & ~bad_time
    if dup.any():
        fail(np.flatnonzero(dup), DUPLICATE, "the request has this series and period twice")

    models: dict[str, SeriesModel] = {}
    ok = ~bad_time & ~dup
    # Row indices per series in one pass (a scan per series is O(series x rows)).
    by_series = pd.Series(np.flatnonzero(ok)).groupby(ids[ok], sort=False).indices
    ok_rows = np.flatnonzero(ok)
    for sid, where in by_series.items():
        found = model_for(sid)
        rows = ok_rows[where]
        if found is None:
            fail(rows, UNKNOWN_SERIES, f"no model set entry for series {sid!r}")
        elif isinstance(found, str):
            fail(rows, NO_MODEL, f"series {sid!r} has no usable model: {found}")
        else:
            models[sid] = found
    scorable = np.zeros(n, bool)
    for sid in models:  # np.isin over object ids is O(rows x series)
        scorable[ok_rows[by_series[sid]]] = True

    tail_rows = _tail_rows(models, ids, time, scorable, spec, fail, by_series, ok_rows)
    scorable &= out["error"].isna().to_numpy()
    if not scorable.any():
        return out

    idx = np.flatnonzero(scorable)
    combined = pd.DataFrame(
        {
            "_sid": np.concatenate([tail_rows["_sid"], ids[idx]]),
            "_t": np.concatenate([tail_rows["_t"], time.to_numpy()[idx]]).astype("datetime64[us]"),
            "_y": np.concatenate([tail_rows["_y"], target[idx]]),
            "_i": np.concatenate([np.full(len(tail_rows["_sid"]), -1), idx]),
            **{
                c: np.concatenate([np.full(len(tail_rows["_sid"]), np.nan), v[idx]])
                for c, v in exog.items()
            },
        }
    ).sort_values(["_sid", "_t"], kind="stable", ignore_index=True)
    frame = _series_frame(combined, spec)
    _predict_recursive(frame, combined["_i"].to_numpy(), models, out, spec, fail)
    return out


def _tail_rows(
    models, ids, time, scorable, spec, fail, by_series, ok_rows
) -> dict[str, np.ndarray]:
    """History rows to put before each series' first request row (none if it sends history)."""
    sids, times, ys = [], [], []
    k = tail_length(spec)
    for sid, m in models.items():
        rows = ok_rows[by_series[sid]]
        rows = rows[scorable[rows]]
        if not len(rows) or m.history_end is None or k == 0:
            continue
        first = time.iloc[rows].min()
        end = pd.Timestamp(m.history_end)
        if first > end:
            expected = _period_after(m.history_end, spec)
            if first != expected:
                fail(
                    rows,
                    GAP,
                    f"series {sid!r} has history until {end.date()}; the next period is "
                    f"{expected.date()} but the request starts at {first.date()}: send the "
                    "periods in between (with their targets where known)",
                )
                continue
        tail = np.asarray(m.tail, dtype=float)
        t = pd.date_range(end=end, periods=len(tail), freq=spec.frequency)
        keep = t < first
        sids.append(np.full(int(keep.sum()), sid, dtype=object))
        times.append(t[keep].to_numpy())
        ys.append(tail[keep])
    if not sids:
        return {
            "_sid": np.array([], dtype=object),
            "_t": np.array([], "datetime64[us]"),
            "_y": np.array([]),
        }
    return {"_sid": np.concatenate(sids), "_t": np.concatenate(times), "_y": np.concatenate(ys)}


def _series_frame(combined: pd.DataFrame, spec: DatasetSpec) -> SeriesFrame:
    data = pd.DataFrame(
        {
            "_sid": combined["_sid"],
            spec.time: combined["_t"],
            spec.target: combined["_y"],
            **{c: combined[c] for c in spec.features.exogenous},
        }
    )
    single_key = spec.model_copy(update={"series_keys": ["_sid"]})
    frame = to_series_frame(data, single_key)
    # Recursive forecasting writes predictions into the target: it must own that array.
    return replace(frame, target=np.array(frame.target, dtype=float, copy=True))


def _predict_recursive(frame, request_of_row, models, out, spec, fail) -> None:
    """Predict rows whose features are known; fill unknown targets with predictions; repeat."""
    row_series = np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))
    pending = request_of_row >= 0
    names = feature_names(spec)
    predicted = np.full(len(pending), np.nan)
    X = feature_matrix(frame, spec)
    while pending.any():
        ready = pending & np.isfinite(X).all(axis=1)
        if not ready.any():
            break
        for s in np.unique(row_series[ready]):
            a, b = frame.offsets[s], frame.offsets[s + 1]  # rows are grouped by series
            rows = a + np.flatnonzero(ready[a:b])
            sid = frame.keys[s][0]
            predicted[rows] = _predict(models[sid].model, X[rows])
        fill = ready & np.isnan(frame.target)
        frame.target[fill] = predicted[fill]
        pending &= ~ready
        if pending.any() and fill.any():
            X = feature_matrix(frame, spec)
    done = np.flatnonzero((request_of_row >= 0) & np.isfinite(predicted))
    targets = request_of_row[done]
    out.loc[targets, "prediction"] = predicted[done]
    out.loc[targets, "model_version"] = [models[frame.keys[s][0]].version for s in row_series[done]]
    left = np.flatnonzero(pending)
    for r in left:
        missing = [names[j] for j in np.flatnonzero(~np.isfinite(X[r]))]
        exog_missing = [m for m in missing if m in spec.features.exogenous]
        if exog_missing:
            fail(
                np.array([request_of_row[r]]),
                MISSING_FEATURE,
                f"feature(s) {exog_missing} missing or not numbers",
            )
        else:
            fail(
                np.array([request_of_row[r]]),
                INSUFFICIENT_HISTORY,
                f"not enough history before this period for {missing}",
            )
