"""Production forecast accuracy of a dataset: what was predicted, joined with what happened.

Predictions come from batch scoring outputs (``scoring/<ds>/predictions/``) and the endpoint's
collected requests (``inference/<ds>/``), both recorded with the model set version, family and
history end of each series. Actuals come from the curated store. Each prediction of a period
that now has an actual becomes one joined row; its backtest MAE and naive scale come from the
manifest of the model set that made it (``models/<ds>/sets/<version>`` or the release folder).
The tables are written under ``monitoring/<ds>/forecast_accuracy/<as_of>/``. No Dagster.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.domain import batch_layout
from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.ml import accuracy
from mlops_assets.ml.score_request import bound_fields
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.serving.collector import collected_prefix
from mlops_assets.storage import Storage


def output_prefix(spec: DatasetSpec, as_of: str) -> str:
    return f"monitoring/{spec.name}/forecast_accuracy/{as_of}/"


def _bounds(spec: DatasetSpec) -> list[str]:
    return [b for level in spec.intervals.levels for b in bound_fields(level)]


def _read_parquet(storage: Storage, prefix: str, since: datetime | None = None) -> list[pa.Table]:
    names = [
        b.name
        for b in storage.list(prefix)
        if b.name.endswith(".parquet")
        and not b.name.rsplit("/", 1)[-1].startswith(".")
        and (since is None or b.last_modified >= since)
    ]
    return [pq.read_table(pa.BufferReader(storage.read_bytes(n))) for n in sorted(names)]


def _normalise(table: pa.Table, spec: DatasetSpec, time: str, version: str, source: str):
    df = table.to_pandas()
    bounds = _bounds(spec)
    if "error" in df:
        df = df[df["error"].isna()]
    df = df[df["prediction"].notna() & df["series_id"].notna()]
    versions = df[version] if version in df else pd.Series(pd.NA, index=df.index)
    if "model_version" in df:  # outputs from before the set's version was recorded
        versions = versions.fillna(df["model_version"])
    out = pd.DataFrame(
        {
            "series_id": df["series_id"].astype(str),
            "time": pd.to_datetime(df[time].astype(str)).dt.normalize(),
            "prediction": df["prediction"].astype(float),
            **{b: df[b].astype(float) if b in df else np.nan for b in bounds},
            "model_set_version": versions.astype(str),
            "family": df["family"].astype(object) if "family" in df else None,
            "history_end": df["history_end"].astype(object) if "history_end" in df else None,
            "source": source,
        }
    )
    return out


def window_start(spec: DatasetSpec, as_of: str) -> pd.Timestamp:
    """The first predicted period measured at ``as_of``: ``monitoring.lookback_periods``
    periods of the spec's frequency before it."""
    step = pd.tseries.frequencies.to_offset(spec.frequency)
    return pd.Timestamp(as_of) - spec.monitoring.lookback_periods * step


def prediction_log(
    storage: Storage, spec: DatasetSpec, since: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Every scored prediction (batch outputs, then collected requests), one per series,
    period and model set version (the last recorded wins). With ``since``: only predicted
    periods from ``since`` on, read from files written no earlier than a horizon before it."""
    written_after = None
    if since is not None:
        step = pd.tseries.frequencies.to_offset(spec.frequency)
        earliest = (since - spec.horizon * step).to_pydatetime()
        written_after = earliest.replace(tzinfo=earliest.tzinfo or UTC)
    parts = [
        _normalise(t, spec, "time", "model_set_version", "batch")
        for t in _read_parquet(
            storage, f"{batch_layout.root(spec.name)}predictions/", written_after
        )
    ]
    parts += [
        _normalise(t, spec, spec.time, "model_set_run", "served")
        for t in _read_parquet(storage, f"{collected_prefix(spec.name)}/", written_after)
    ]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=["series_id", "time", "prediction", "model_set_version"])
    log = pd.concat(parts, ignore_index=True)
    if since is not None:
        log = log[log["time"] >= since]
    return log.drop_duplicates(["series_id", "time", "model_set_version"], keep="last")


def actuals(storage: Storage, spec: DatasetSpec, since: date | None, until: date) -> pd.DataFrame:
    """``series_id``, ``time``, ``actual`` of the curated rows in [since, until]."""
    table = CuratedStore(storage, spec).read(
        columns=[*spec.series_keys, spec.time, spec.target], since=since, until=until
    )
    df = table.to_pandas()
    ids = df[spec.series_keys[0]].astype(str).radd(f"{spec.series_keys[0]}=")
    for k in spec.series_keys[1:]:
        ids = ids + f"/{k}=" + df[k].astype(str)
    return pd.DataFrame(
        {
            "series_id": ids,
            "time": pd.to_datetime(df[spec.time]).dt.normalize(),
            "actual": df[spec.target].astype(float),
        }
    ).dropna(subset=["actual"])


def _manifest(storages: list[Storage], spec: DatasetSpec, version: str) -> pa.Table | None:
    for storage in storages:
        for folder in (ms.set_folder(spec, version), ms.release_folder(spec, version)):
            try:
                return ms.read_manifest(storage, ms.read_ref_file(storage, folder))
            except (ms.ModelSetError, FileNotFoundError):
                continue
    return None


def backtest_reference(
    storages: list[Storage], spec: DatasetSpec, versions: list[str]
) -> pd.DataFrame:
    """Per model set version and series: the backtest ``mae``, the naive ``scale``
    (``residual_scale``), ``family`` and ``history_end`` from its verified manifest."""
    parts = []
    for version in versions:
        manifest = _manifest(storages, spec, version)
        if manifest is None:
            continue
        cols = [c for c in ("series_id", "mae", "residual_scale", "family", "history_end")]
        df = manifest.select([c for c in cols if c in manifest.column_names]).to_pandas()
        parts.append(df.assign(model_set_version=version))
    if not parts:
        return pd.DataFrame(columns=["model_set_version", "series_id", "backtest_mae", "scale"])
    ref = pd.concat(parts, ignore_index=True)
    return ref.rename(columns={"mae": "backtest_mae", "residual_scale": "scale"})


@dataclass
class AccuracyOutcome:
    """What measuring production accuracy at one as-of date found and wrote."""

    predictions: int
    joined: pd.DataFrame
    by_group: pd.DataFrame  # per series, horizon step and model set version
    by_step: pd.DataFrame  # per horizon step and model set version, over all series
    series: pd.DataFrame  # ml.accuracy.degraded_series
    written: list[str]

    @property
    def degraded(self) -> list[str]:
        """Degraded series ids, the worst (highest error ratio) first."""
        bad = self.series[self.series["degraded"].astype(bool)]
        return bad.sort_values("error_ratio", ascending=False)["series_id"].tolist()


def join_predictions(
    log: pd.DataFrame, truth: pd.DataFrame, reference: pd.DataFrame, spec: DatasetSpec
) -> pd.DataFrame:
    """The predictions that have an actual, with their step and backtest reference (the
    manifest's family and history end fill those a record lacks)."""
    joined = log.merge(truth, on=["series_id", "time"], how="inner")
    if joined.empty:
        return joined.assign(step=pd.Series(dtype=int), backtest_mae=np.nan, scale=np.nan)
    joined = joined.merge(
        reference, on=["model_set_version", "series_id"], how="left", suffixes=("", "_manifest")
    )
    for col in ("family", "history_end"):
        if f"{col}_manifest" in joined:
            joined[col] = joined[col].fillna(joined.pop(f"{col}_manifest"))
    for col in ("backtest_mae", "scale"):
        if col not in joined:
            joined[col] = np.nan
    joined["step"] = accuracy.horizon_steps(joined["time"], joined["history_end"], spec.frequency)
    return joined


def _write(storage: Storage, name: str, df: pd.DataFrame) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
    storage.write_bytes(name, buf.getvalue())  # atomic: readers see the old table or this
    return name


def measure_accuracy(
    storage: Storage, spec: DatasetSpec, as_of: str, model_storages: list[Storage] | None = None
) -> AccuracyOutcome:
    """Join every recorded prediction with the curated actuals known at ``as_of``, measure
    accuracy per series, step and model set version, judge each series against its backtest
    (``spec.monitoring``) and write the tables under ``output_prefix``."""
    log = prediction_log(storage, spec, window_start(spec, as_of))
    since = log["time"].min() if len(log) else None
    until = date.fromisoformat(as_of)
    truth = actuals(storage, spec, since.date() if since is not None else None, until)
    versions = sorted(log["model_set_version"].dropna().unique()) if len(log) else []
    reference = backtest_reference([storage, *(model_storages or [])], spec, versions)
    joined = join_predictions(log, truth, reference, spec)
    levels = spec.intervals.levels
    by_group = accuracy.accuracy_table(joined, levels)
    by_step = accuracy.accuracy_table(joined, levels, by=("step", "model_set_version"))
    m = spec.monitoring
    series = accuracy.degraded_series(joined, m.degraded_ratio, m.min_points)
    prefix = output_prefix(spec, as_of)
    written = [
        _write(storage, f"{prefix}{name}.parquet", df)
        for name, df in (("accuracy", by_group), ("by_step", by_step), ("series", series))
    ]
    return AccuracyOutcome(len(log), joined, by_group, by_step, series, written)
