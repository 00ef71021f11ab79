"""Engines that train every series of a dataset with the same batch function.

Both engines call ``train_series_frame``: lay a batch of whole series out on the calendar,
fit, backtest and choose each series' model (``selection.select``: the features in one
vectorised pass, one fit per series and candidate family), then ``persistence.dumps`` each
chosen model. ``train_local`` runs
it over chunks of whole series in a process pool; ``train_spark`` runs it on each group of
``groupBy(keys).applyInPandas``. Results are one record per series (``result_schema``), equal
across engines except the timing columns.

The local engine forks its workers after the data is laid out, so a task is just a range of
series: nothing but the results crosses a process boundary. Where ``fork`` is unavailable it
pickles each chunk's numpy columns instead (spawn), which costs about a memory copy.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time as _time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
from threadpoolctl import threadpool_limits

from mlops_assets.ml import combination, persistence, ridge_stats
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.features import (
    SeriesFrame,
    feature_matrix,
    select_series,
    to_series_frame,
)
from mlops_assets.ml.fitting import FAILED, METRIC_NAMES, SeriesFit
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.selection import Selection, select, stored_history, with_prior
from mlops_assets.ml.spec import DatasetSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql.types import StructType

DEFAULT_CHUNK_ROWS = 250_000
TIMING_COLUMNS = ("fit_seconds", "serialize_seconds")
BY_STEP = ("mae", "naive_mae", "seasonal_naive_mae")


def result_schema(spec: DatasetSpec) -> pa.Schema:
    """One record per series: identity, outcome, metrics, training window and the model."""
    return pa.schema(
        [
            pa.field("series_id", pa.string(), nullable=False),
            *(pa.field(k, pa.string(), nullable=False) for k in spec.series_keys),
            pa.field("status", pa.string(), nullable=False),
            pa.field("reason", pa.string()),
            pa.field("n_train", pa.int64(), nullable=False),
            pa.field("n_holdout", pa.int64(), nullable=False),
            pa.field("train_start", pa.string()),
            pa.field("train_end", pa.string()),
            *(pa.field(m, pa.float64()) for m in METRIC_NAMES),
            # The family the backtest chose, the runner-up and every eligible family's score.
            pa.field("family", pa.string()),
            pa.field("runner_up", pa.string()),
            pa.field("runner_up_score", pa.float64()),
            pa.field("family_scores", pa.string()),
            # A combination's members and weights as JSON (model.choice: combine), else null.
            pa.field("weights", pa.string()),
            # The run's panel prior those weights were computed with (JSON), else null.
            pa.field("combine_prior", pa.string()),
            # Conformal half-width per horizon step at each of the spec's levels.
            # The chosen model's backtest residuals, origin by origin (horizon values each),
            # and its scale: what the run's conformal intervals are calibrated from.
            pa.field("backtest_residuals", pa.list_(pa.float64())),
            pa.field("residual_scale", pa.float64()),
            # Backtest MAE per horizon step (step 1 first): the model and both baselines.
            *(pa.field(f"{m}_by_step", pa.list_(pa.float64())) for m in BY_STEP),
            pa.field("fit_seconds", pa.float64(), nullable=False),
            pa.field("serialize_seconds", pa.float64(), nullable=False),
            pa.field("model_format", pa.string()),
            pa.field("model", pa.binary()),
            pa.field("model_sha256", pa.string()),
            # The last targets before scoring starts: what lags and rolling means need.
            pa.field("history_end", pa.string()),
            pa.field("history_tail", pa.list_(pa.float64())),
            # Sufficient statistics of a ridge model (model.refit only: ridge_stats).
            *(ridge_stats.FIELDS if spec.model.refit is not None else []),
        ]
    )


def series_record(
    spec: DatasetSpec,
    key: tuple,
    sel: Selection,
    j: int,
    frame: SeriesFrame,
    artifact: bytes | None = None,
):
    """Series ``j``'s record (``result_schema``); ``artifact``: its chosen model's bytes where
    the caller wrote them already (``persistence.linear_artifacts``)."""
    a, b = int(frame.offsets[j]), int(frame.offsets[j + 1])
    fit = sel.fits[j] or SeriesFit(None, sel.status[j])
    started = _time.perf_counter()
    chosen = sel.models[j]
    model = artifact if artifact is not None or chosen is None else persistence.dumps(chosen)
    serialize_seconds = _time.perf_counter() - started
    info = fit.info()
    info.update(
        status=sel.status[j],
        reason=sel.reason[j],
        n_holdout=int(sel.pairs[j]),
        **{m: float(v[j]) for m, v in sel.metrics.items()},
    )
    return {
        "series_id": spec.series_id(key),
        **{k: str(v) for k, v in zip(spec.series_keys, key, strict=True)},
        **info,
        "family": sel.family[j],
        "runner_up": sel.runner_up[j],
        "runner_up_score": float(sel.runner_up_score[j]),
        "family_scores": sel.scores[j],
        "weights": sel.weights[j],
        "combine_prior": _prior_json(spec),
        "backtest_residuals": sel.residuals[j].ravel().tolist(),
        "residual_scale": float(sel.residual_scale[j]),
        **{f"{m}_by_step": sel.by_step[m][j].tolist() for m in BY_STEP},
        "serialize_seconds": serialize_seconds,
        "model_format": persistence.read_header(model)[0]["format"] if model else None,
        "model": model,
        "model_sha256": persistence.sha256(model) if model else None,
        "history_end": str(frame.time[b - 1].astype("datetime64[D]")) if b > a else None,
        # Enough targets to score the next periods or re-score the backtest window.
        "history_tail": frame.target[max(a, b - stored_history(spec)) : b].tolist(),
    }


def _prior_json(spec: DatasetSpec) -> str | None:
    prior = spec.model.combine.prior if spec.model.choice == "combine" else None
    return json.dumps(prior, sort_keys=True) if prior is not None else None


def train_series_frame(
    frame: SeriesFrame, spec: DatasetSpec
) -> tuple[list[dict], dict[str, float]]:
    """Train every series of a batch: the function both engines run.

    The series are laid out on the calendar first (``calendar.calendar_series``, the spec's
    fill rules), so lags and rolling windows count periods; a filled period whose target is
    unknown (fill ``none``) has a NaN target and is never a training or holdout row.

    Returns:
        One record per series (``result_schema`` fields) and the seconds of the batch's
        phases, which the engines report summed: ``features`` (the calendar layout and, with
        ``model.refit``, the feature matrix), ``backtest`` (every candidate fitted and
        backtested, and the choice, less the fits themselves: the records' ``fit_seconds``)
        and ``records`` (the records, less the models' serialisation: ``serialize_seconds``).
    """
    clock = Phases()
    with clock("features"):
        cal = calendar_series(frame, spec)
        regular = cal.frame
        # With model.refit the ridge statistics need the feature matrix too: computed once.
        X = feature_matrix(regular, spec) if spec.model.refit is not None else None
    with clock("backtest"):
        sel = select(regular, spec, X=X)
    with clock("records"):
        records: list[dict | None] = [None] * frame.n_series
        stats = None
        if spec.model.refit is not None:
            chosen = sel.family == spec.model.family
            stats = ridge_stats.record_columns(regular, spec, chosen, X=X, fitted=sel.moments)
        for j, i in enumerate(cal.kept):
            records[i] = series_record(spec, regular.keys[j], sel, j, regular) | (
                stats[j] if stats else {}
            )
        for i, reason in cal.invalid.items():
            records[i] = _failed_record(spec, frame.keys[i], reason)
    out = [r for r in records if r is not None]
    seconds = clock.seconds
    seconds["backtest"] = max(0.0, seconds["backtest"] - sum(r["fit_seconds"] for r in out))
    seconds["records"] = max(0.0, seconds["records"] - sum(r["serialize_seconds"] for r in out))
    return out, seconds


def _failed_record(spec: DatasetSpec, key: tuple, reason: str) -> dict:
    return {
        "series_id": spec.series_id(key),
        **{k: str(v) for k, v in zip(spec.series_keys, key, strict=True)},
        **SeriesFit(None, FAILED, reason).info(),
        "family": None,
        "runner_up": None,
        "runner_up_score": float("nan"),
        "family_scores": "{}",
        "weights": None,
        "combine_prior": _prior_json(spec),
        "backtest_residuals": [],
        "residual_scale": float("nan"),
        **{f"{m}_by_step": [] for m in BY_STEP},
        "serialize_seconds": 0.0,
        "model_format": None,
        "model": None,
        "model_sha256": None,
        "history_end": None,
        "history_tail": [],
        **{f.name: None for f in ridge_stats.FIELDS if spec.model.refit is not None},
    }


def _to_frame(records: list[dict], spec: DatasetSpec) -> pd.DataFrame:
    schema = result_schema(spec)
    # With no records (an instance whose share of the series is empty) a list column would be
    # float64, which Arrow cannot convert to its list type: list columns stay objects.
    return pd.DataFrame(
        {
            f.name: pd.Series([r[f.name] for r in records], dtype=object)
            if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
            else [r[f.name] for r in records]
            for f in schema
        },
        columns=schema.names,
    )


def records_arrow(records: list[dict], spec: DatasetSpec) -> pa.Table:
    """Records (``result_schema`` fields) as one Arrow table: compact to send and to keep."""
    return pa.Table.from_pandas(
        _to_frame(records, spec), schema=result_schema(spec), preserve_index=False
    )


def train_partition(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[object | None, dict]:
    """Train the model of one series from its rows, as the engines do.

    Args:
        frame: Rows of exactly one series, with the spec's columns, in any order.
        spec: The dataset spec.

    Returns:
        The chosen model (a Pipeline or a parameter model; None without one) and the
        series' ``result_schema`` fields but the model bytes.

    Raises:
        ValueError: ``frame`` holds no rows or more than one series (a caller error).
    """
    series = to_series_frame(frame, spec)
    if series.n_series != 1:
        raise ValueError(f"train_partition takes one series; got {series.n_series}")
    records, _ = train_series_frame(series, spec)
    info = {k: v for k, v in records[0].items() if k != "model"}
    model = records[0]["model"]
    return (persistence.loads(model) if model is not None else None), info


# ---- local engine ---------------------------------------------------------------------------

_FORKED: list[SeriesFrame] = []


def _run_chunk(spec_json: str, chunk: SeriesFrame | int) -> tuple[list[dict], dict[str, float]]:
    frame = _FORKED[chunk] if isinstance(chunk, int) else chunk
    # One BLAS thread per worker: the pool already uses every core.
    with threadpool_limits(limits=1):
        return train_series_frame(frame, _spec(spec_json))


@lru_cache(maxsize=8)
def _spec(spec_json: str) -> DatasetSpec:
    return DatasetSpec.model_validate_json(spec_json)


def train_local(
    data: pa.Table | pd.DataFrame | SeriesFrame,
    spec: DatasetSpec,
    *,
    series: Iterable[str | Sequence] | None = None,
    max_workers: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    start_method: str | None = None,
    phases: Phases | None = None,
) -> pd.DataFrame:
    """Train every series (or the chosen ones) in a pool of processes.

    Args:
        data: Rows of many series with the spec's columns (or an already grouped frame).
        spec: The dataset spec.
        series: Train only these series (ids or key tuples); ``None`` trains all.
        max_workers: Processes to use; default all cores, 1 trains in this process.
        chunk_rows: Rows per task; tasks hold whole series.
        start_method: ``fork`` (default where available) or ``spawn``/``forkserver``.
        phases: If given, the seconds of each phase are added to it (prepare; features,
            backtest, fit, records, serialize: summed over workers, see
            ``train_series_frame``; wall).

    Returns:
        One row per series, ``result_schema(spec)`` columns, in series order.
    """
    started = _time.perf_counter()
    frame = prepare_local(data, spec, series)
    prepared = _time.perf_counter() - started
    spec = with_prior(spec, frame)  # one prior for every chunk (choice: combine)
    workers = max_workers or os.cpu_count() or 1
    chunks = frame.chunks(chunk_rows, min_chunks=4 * workers) if frame.n_series else []
    if workers == 1 or len(chunks) <= 1:
        results = [_run_chunk(spec.model_dump_json(), c) for c in chunks]
    else:
        results = _run_pool(chunks, spec, min(workers, len(chunks)), start_method)
    out = _to_frame([r for rs, _ in results for r in rs], spec)
    if phases is not None:
        phases.add("prepare", prepared)
        for _, spent in results:
            phases.update(spent)
        phases.update(
            {
                "fit": float(out["fit_seconds"].sum()),
                "serialize": float(out["serialize_seconds"].sum()),
                "wall": _time.perf_counter() - started,
            }
        )
    return out


def prepare_local(
    data: pa.Table | pd.DataFrame | SeriesFrame,
    spec: DatasetSpec,
    series: Iterable[str | Sequence] | None = None,
) -> SeriesFrame:
    """The grouped frame of ``data``'s series (the chosen ones; ``None``: all) to train."""
    if isinstance(data, SeriesFrame):
        return select_series(data, spec, series)
    return to_series_frame(data, spec, series)


def _run_pool(
    chunks: list[SeriesFrame], spec: DatasetSpec, workers: int, start_method: str | None
) -> list[tuple[list[dict], dict[str, float]]]:
    """Every chunk trained in a new pool of ``workers`` processes, in the chunks' order."""
    method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    run = partial(_run_chunk, spec.model_dump_json())
    forked = method == "fork"
    if forked:
        # Forked workers read the chunks from the parent's memory: a task is only an index.
        # Every worker is forked at the first submit.
        _FORKED[:] = chunks
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        try:
            futures = [pool.submit(run, i if forked else c) for i, c in enumerate(chunks)]
        finally:
            if forked:
                _FORKED.clear()
        try:
            return [f.result() for f in futures]
        finally:
            pool.shutdown(cancel_futures=True)


# ---- Spark engine ---------------------------------------------------------------------------


def spark_result_schema(spec: DatasetSpec) -> StructType:
    """``result_schema`` as a Spark schema."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(result_schema(spec))


def spark_group_function(spec: DatasetSpec) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The function ``applyInPandas`` calls on each series' rows."""
    spec_json = spec.model_dump_json()

    def train_group(pdf: pd.DataFrame) -> pd.DataFrame:
        group_spec = _spec(spec_json)
        records, _ = train_series_frame(to_series_frame(pdf, group_spec), group_spec)
        return _to_frame(records, group_spec)

    return train_group


def spark_series_id(spec: DatasetSpec):
    """A Spark column equal to ``spec.series_id`` of each row's keys."""
    from pyspark.sql import functions as F

    parts = []
    for i, k in enumerate(spec.series_keys):
        parts += [F.lit(("/" if i else "") + f"{k}="), F.col(k).cast("string")]
    return F.concat(*parts)


def train_spark(
    sdf: SparkDataFrame,
    spec: DatasetSpec,
    *,
    series: Iterable[str | Sequence] | None = None,
) -> SparkDataFrame:
    """Train every series (or the chosen ones) with ``groupBy(keys).applyInPandas``.

    Args:
        sdf: A Spark DataFrame with the spec's columns.
        spec: The dataset spec.
        series: Train only these series (ids or key tuples); ``None`` trains all.

    Returns:
        A lazy Spark DataFrame with one ``spark_result_schema(spec)`` row per series.
    """
    from pyspark.sql import functions as F

    needed = [*spec.series_keys, spec.time, spec.target, *spec.features.exogenous]
    sdf = sdf.select(*dict.fromkeys(needed))
    if series is not None:
        ids = sorted({s if isinstance(s, str) else spec.series_id(tuple(s)) for s in series})
        wanted = sdf.sparkSession.createDataFrame([(i,) for i in ids], "series_id string")
        sdf = (
            sdf.withColumn("series_id", spark_series_id(spec))
            .join(F.broadcast(wanted), "series_id", "left_semi")
            .drop("series_id")
        )
    spec = _spark_prior(sdf, spec)
    return sdf.groupBy(*spec.series_keys).applyInPandas(
        spark_group_function(spec), schema=spark_result_schema(spec)
    )


def _spark_prior(sdf: SparkDataFrame, spec: DatasetSpec) -> DatasetSpec:
    """``selection.with_prior`` on the driver: the rows of the prior's sample of series
    (``combination.sample_ids``, the local engine's sample) collected, the rest left alone."""
    if spec.model.choice != "combine" or spec.model.combine.prior is not None:
        return spec
    from pyspark.sql import functions as F

    with_id = sdf.withColumn("series_id", spark_series_id(spec))
    ids = [r[0] for r in with_id.select("series_id").distinct().collect()]
    if not ids:
        return spec
    sample = combination.sample_ids(ids, spec.model.combine.prior_series)
    wanted = sdf.sparkSession.createDataFrame([(i,) for i in sample], "series_id string")
    rows = with_id.join(F.broadcast(wanted), "series_id", "left_semi").drop("series_id")
    return with_prior(spec, to_series_frame(rows.toPandas(), spec))
