"""Deterministic sample data for the bundled specs, and named kinds of bad data for tests.

``sales``: weekly unit sales per store x product with trend, yearly seasonality, price
elasticity, promotions and noise. Generated vectorised in chunks of series, so 10,000 series x
4,000 weeks (40M rows) stays bounded in memory. ``diabetes``: scikit-learn's offline dataset.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_assets.ml import ragged_sales
from mlops_assets.ml.tables import decode_dictionaries

DEFAULT_END = "2026-11-16"  # a Monday: the newest week of generated sales
_WEEKS_PER_YEAR = 365.25 / 7


BLOCK = 250  # series drawn together; part of the data's definition, so never change it


@dataclass(frozen=True)
class SalesShape:
    n_series: int
    n_periods: int
    seed: int = 0
    end: str = DEFAULT_END
    # Ragged lives, missing weeks and intermittent demand (``ragged_sales``); off: dense series.
    realistic: bool = False

    @property
    def n_products(self) -> int:
        return min(self.n_series, 100)

    @property
    def weeks(self) -> pd.DatetimeIndex:
        return pd.date_range(end=self.end, periods=self.n_periods, freq="W-MON")


def series_names(
    n_series: int, n_products: int, index: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Store and product of each series (of ``index`` only, if given: a chunk's series)."""
    i = np.arange(n_series) if index is None else index
    stores = np.char.add("S", np.char.zfill((i // n_products).astype(str), 4))
    products = np.char.add("P", np.char.zfill((i % n_products).astype(str), 3))
    return stores, products


def _sales_chunk(shape: SalesShape, first: int, count: int) -> pa.Table:
    """Series ``first`` to ``first + count``; always drawn as a whole block, then cut."""
    keep, count = count, BLOCK
    # One generator per fixed block of series, seeded by (seed, first series of the block): a
    # series' data depends only on the seed and its index, however many series are generated.
    rng = np.random.default_rng([shape.seed, first])
    t = np.arange(shape.n_periods, dtype=np.float64)
    level = rng.lognormal(mean=3.0, sigma=0.6, size=(count, 1))
    trend = rng.normal(0.0, 0.05, size=(count, 1)) / _WEEKS_PER_YEAR
    amp = rng.uniform(0.05, 0.35, size=(count, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1))
    elasticity = rng.uniform(-2.5, -0.8, size=(count, 1))
    lift = rng.uniform(1.1, 1.6, size=(count, 1))
    noise_sd = rng.uniform(0.05, 0.2, size=(count, 1))
    base_price = np.round(rng.uniform(1.0, 20.0, size=(count, 1)), 2)

    promo = rng.random((count, shape.n_periods)) < 0.1
    price = (
        base_price
        * np.where(promo, 0.8, 1.0)
        * np.exp(rng.normal(0, 0.03, size=(count, shape.n_periods)))
    )
    season = 1 + amp * np.sin(2 * np.pi * t / _WEEKS_PER_YEAR + phase)
    growth = np.maximum(0.2, 1 + trend * (t - t[-1]))
    mean = level * growth * season * (price / base_price) ** elasticity * np.where(promo, lift, 1)
    sales = np.round(mean * np.exp(rng.normal(0, 1, size=mean.shape) * noise_sd), 2)
    count, sales, price, promo = keep, sales[:keep], price[:keep], promo[:keep]

    stores, products = series_names(
        shape.n_series, shape.n_products, np.arange(first, first + count)
    )
    weeks = np.broadcast_to(shape.weeks.values.astype("datetime64[D]"), sales.shape)
    stores = np.broadcast_to(stores[:, None], sales.shape)
    products = np.broadcast_to(products[:, None], sales.shape)
    rows = np.ones(sales.shape, dtype=bool)
    if shape.realistic:
        # Its own generator: the dense draws above stay those of the default data.
        rag = ragged_sales.draw(
            np.random.default_rng([shape.seed, first, 1]), BLOCK, shape.n_periods
        )
        rows = rag.present[:keep]
        sales = np.where(rag.selling[:keep], sales, 0.0)
    return pa.table(
        {
            "store": pa.array(stores[rows]).dictionary_encode(),
            "product": pa.array(products[rows]).dictionary_encode(),
            "week": pa.array(weeks[rows], type=pa.date32()),
            "sales": pa.array(sales[rows]),
            "price": pa.array(np.round(price, 2)[rows]),
            "promo": pa.array(promo[rows].astype(np.int64)),
        }
    )


def iter_sales(shape: SalesShape, progress: bool = False) -> Iterator[pa.Table]:
    """Yield the dataset in blocks of whole series (ordered by series, then week)."""
    starts = range(0, shape.n_series, BLOCK)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generating series", unit="chunk", total=len(starts))
    for first in starts:
        yield _sales_chunk(shape, first, min(BLOCK, shape.n_series - first))


def sales_table(shape: SalesShape) -> pa.Table:
    return pa.concat_tables(iter_sales(shape)).combine_chunks()


def diabetes_table(start: str = "2020-01-01") -> pa.Table:
    """scikit-learn's diabetes data (shipped with scikit-learn, no download) as one series."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True)
    df = data.frame.rename(columns={"target": "progression"})
    df.insert(0, "visit_date", pd.date_range(start, periods=len(df), freq="D").date)
    df.insert(0, "cohort", "all")
    return pa.Table.from_pandas(df, preserve_index=False)


# ---- writing drops -------------------------------------------------------------------------


def to_bytes(table: pa.Table, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, buf, compression="zstd")
    elif fmt == "csv":
        pacsv.write_csv(decode_dictionaries(table), buf)
    else:
        raise ValueError(f"unknown drop format {fmt!r}: use parquet or csv")
    return buf.getvalue()


def split_by_time(
    table: pa.Table, time_col: str, n_drops: int, times: pa.Array | None = None
) -> list[pa.Table]:
    """A history drop, then one drop per later period: how data arrives day after day.

    ``times`` are the dataset's periods (default: the table's own); given, a part of the data
    that lacks some periods (a chunk of ragged series) splits as the whole dataset does.
    """
    if n_drops < 1:
        raise ValueError("n_drops must be at least 1")
    col = table[time_col]
    times = pc.unique(col).sort() if times is None else times
    if n_drops > len(times):
        raise ValueError(f"asked for {n_drops} drops but the data has {len(times)} periods")
    if n_drops == 1:
        return [table]
    later = times[len(times) - n_drops + 1 :]
    parts = [table.filter(pc.less(col, later[0]))]
    parts += [table.filter(pc.equal(col, t)) for t in later]
    return parts


# ---- bad data, by name ---------------------------------------------------------------------
# Each takes a good drop (a pandas frame of a spec's columns) and returns the bytes of a bad
# drop file and its extension. Tests use them to show each is rejected and nothing is lost.


def _csv(df: pd.DataFrame, **kw) -> bytes:
    return df.to_csv(index=False, **kw).encode(kw.pop("encoding", "utf-8"))


def _first_rows(df: pd.DataFrame, n: int = 3) -> pd.Index:
    return df.index[: min(n, len(df))]


def make_bad_drop(df: pd.DataFrame, target: str, time_col: str, kind: str) -> tuple[bytes, str]:
    df = df.copy()
    rows = _first_rows(df)
    match kind:
        case "missing_column":
            return _csv(df.drop(columns=[df.columns[-1]])), "csv"
        case "extra_column":
            df["colour"] = "red"
            return _csv(df), "csv"
        case "wrong_types":
            df[target] = df[target].astype(object)
            df.loc[rows, target] = "n/a"
            return _csv(df), "csv"
        case "empty_file":
            return b"", "csv"
        case "header_only":
            return _csv(df.iloc[:0]), "csv"
        case "truncated_parquet":
            data = to_bytes(pa.Table.from_pandas(df, preserve_index=False), "parquet")
            return data[: len(data) // 2], "parquet"
        case "other_delimiter":
            return df.to_csv(index=False, sep=";").encode(), "csv"
        case "other_encoding":
            return df.to_csv(index=False).encode("utf-16"), "csv"
        case "nan_inf":
            df.loc[rows[:1], target] = np.nan
            df.loc[rows[1:2], target] = np.inf
            return _csv(df), "csv"
        case "negative_target":
            df.loc[rows, target] = -5.0
            return _csv(df), "csv"
        case "duplicate_key_time":
            return _csv(pd.concat([df, df.loc[rows]])), "csv"
        case "future_timestamps":
            df[time_col] = pd.to_datetime(df[time_col]).astype("datetime64[us]")
            df.loc[rows, time_col] = pd.Timestamp("2100-01-04")
            df[time_col] = df[time_col].dt.date
            return _csv(df), "csv"
        case "ancient_timestamps":
            df[time_col] = pd.to_datetime(df[time_col]).astype("datetime64[us]")
            df.loc[rows, time_col] = pd.Timestamp("1800-01-06")
            df[time_col] = df[time_col].dt.date
            return _csv(df), "csv"
        case "off_calendar_timestamps":  # a weekly spec: Thursdays among the Mondays
            df[time_col] = pd.to_datetime(df[time_col]).astype("datetime64[us]")
            df.loc[rows, time_col] += pd.Timedelta(days=3)
            df[time_col] = df[time_col].dt.date
            return _csv(df), "csv"
        case "distribution_shift":
            df[target] = df[target] * 25 + 1000
            return _csv(df), "csv"
        case "unknown_category":
            col = _categorical_column(df)
            df[col] = df[col].astype(object)
            df.loc[rows, col] = "7" if col == "promo" else "unknown"
            return _csv(df), "csv"
    raise ValueError(f"unknown bad-data kind {kind!r}; known: {BAD_KINDS}")


def _categorical_column(df: pd.DataFrame) -> str:
    for c in ("promo", "cohort"):
        if c in df.columns:
            return c
    raise ValueError("no categorical column with allowed values in this frame")


BAD_KINDS = (
    "missing_column",
    "extra_column",
    "wrong_types",
    "empty_file",
    "header_only",
    "truncated_parquet",
    "other_delimiter",
    "other_encoding",
    "nan_inf",
    "negative_target",
    "duplicate_key_time",
    "future_timestamps",
    "ancient_timestamps",
    "off_calendar_timestamps",
    "distribution_shift",
    "unknown_category",
)
