"""Lazy, verified, bounded loading of one model set's per-series models.

With thousands of series a scoring process cannot load every model at start (the container
would run out of memory and start slowly); it loads a series' model the first time it is asked
for, verifies its sha256 against the manifest before deserialising it, and keeps the most
recently used ones within a count and a byte budget (LRU). Thread-safe: the inference server
runs ``run()`` from several threads. Reads go through ``read_range`` so the same code works on
a local folder, a mounted model directory or Blob storage.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml import persistence
from mlops_assets.ml.intervals import INTERVAL_PREFIX
from mlops_assets.ml.scoring import SeriesModel

ReadRange = Callable[[str, int, int], bytes]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    models: int = 0
    bytes: int = 0


class _Columns:
    """A manifest's columns as Python values, and its list columns (history tails, interval
    widths) as one numpy array each, sliced per series. Those ``eager`` are converted at once
    (what loading a model reads: the first request after a load or a swap pays nothing more);
    any other on first use (a manifest carries columns scoring never reads, such as each
    series' backtest residuals, which cost more to convert than all the rest)."""

    def __init__(
        self, manifest: pa.Table, eager: tuple[str, ...] = (), arrays: tuple[str, ...] = ()
    ):
        self._table = manifest
        self._names = frozenset(manifest.column_names)
        self._values: dict[str, list] = {c: manifest[c].to_pylist() for c in eager if c in self}
        self._arrays = {c: self._list_column(c) for c in arrays if c in self}
        self._lock = threading.Lock()

    def _list_column(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        col = self._table[key].combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):  # all null
            return np.zeros(0), np.zeros(len(col) + 1, np.int64), np.ones(len(col), bool)
        null = col.is_null().to_numpy(zero_copy_only=False)
        values = pc.cast(col.values, pa.float64()).to_numpy(zero_copy_only=False)
        return values, col.offsets.to_numpy(), null

    def __contains__(self, key: str) -> bool:
        return key in self._names

    def value(self, key: str, i: int):
        values = self._values.get(key)
        if values is None:
            with self._lock:
                values = self._values.setdefault(key, self._table[key].to_pylist())
        return values[i]

    def array(self, key: str, i: int) -> np.ndarray | None:
        """Row ``i`` of list column ``key`` as float64 (a copy), None where null or empty."""
        parts = self._arrays.get(key)
        if parts is None:
            parts = self._list_column(key)
            with self._lock:
                parts = self._arrays.setdefault(key, parts)
        values, offsets, null = parts
        a, b = offsets[i], offsets[i + 1]
        return None if null[i] or a == b else values[a:b].copy()


# What loading a series' model reads from the manifest (``_load``, and the provenance of
# scored rows: ``entry``).
_LOAD_COLUMNS = (
    "artifact",
    "offset",
    "length",
    "model_sha256",
    "status",
    "reason",
    "trained_in",
    "history_end",
    "family",
)


class ModelSetReader:
    """``model_for(series_id)`` over one model set's manifest, for ``scoring.score``."""

    def __init__(
        self,
        manifest: pa.Table,
        read_range: ReadRange,
        *,
        version: str,
        max_models: int = 2_000,
        max_bytes: int = 256 << 20,
    ):
        self.version = version
        self.max_models, self.max_bytes = max_models, max_bytes
        self._read = read_range
        self._rows = {sid: i for i, sid in enumerate(manifest["series_id"].to_pylist())}
        # Interval half-widths per horizon step, one column per level (``interval_80``).
        self._widths = [c for c in manifest.column_names if c.startswith(INTERVAL_PREFIX)]
        self._cols = _Columns(manifest, _LOAD_COLUMNS, ("history_tail", *self._widths))
        self._cache: OrderedDict[str, tuple[SeriesModel, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.stats = CacheStats()

    @property
    def series(self) -> list[str]:
        return list(self._rows)

    def __contains__(self, series_id: str) -> bool:
        return series_id in self._rows

    def _entry(self, i: int, key: str):
        return self._cols.value(key, i) if key in self._cols else None

    def entry(self, series_id: str, key: str):
        """The manifest's ``key`` of a series (``family``, ``history_end``...), None if the
        series or the column is not in the manifest."""
        i = self._rows.get(series_id)
        return None if i is None else self._entry(i, key)

    def model_for(self, series_id: str) -> SeriesModel | str | None:
        """The series' model, or a reason it has none, or None for an unknown series."""
        i = self._rows.get(series_id)
        if i is None:
            return None
        with self._lock:
            hit = self._hit(series_id)
            if hit is not None:
                return hit
            # One loader per series: concurrent first requests don't load it twice.
            gate = self._loading.setdefault(series_id, threading.Lock())
        try:
            with gate:
                with self._lock:
                    hit = self._hit(series_id)
                    if hit is not None:
                        return hit
                return self._load(i, series_id)
        finally:
            with self._lock:
                self._loading.pop(series_id, None)

    def _load(self, i: int, series_id: str) -> SeriesModel | str:
        artifact = self._entry(i, "artifact")
        if artifact is None:
            status = self._entry(i, "status")
            return f"{status}: {self._entry(i, 'reason') or 'no model was stored'}"
        offset = self._entry(i, "offset")
        data = self._read(artifact, offset, self._entry(i, "length"))
        try:
            model = persistence.load_verified(data, self._entry(i, "model_sha256"))
        except persistence.ModelIntegrityError as exc:
            raise persistence.ModelIntegrityError(
                f"model set {self.version}: artifact {artifact}@{offset} of series {series_id!r}: "
                f"{exc}"
            ) from None
        tail = self._cols.array("history_tail", i) if "history_tail" in self._cols else None
        widths = {c: self._cols.array(c, i) for c in self._widths}
        entry = SeriesModel(
            model=model,
            version=self._entry(i, "trained_in") or self.version,
            history_end=self._entry(i, "history_end"),
            tail=np.zeros(0) if tail is None else tail,
            widths={c: w for c, w in widths.items() if w is not None},
        )
        with self._lock:
            self.stats.misses += 1
            self._cache[series_id] = (entry, len(data))
            self.stats.bytes += len(data)
            self._evict()
        return entry

    def hot_series(self) -> list[str]:
        """Cached series, most recently used last (to warm a successor set on a hot swap)."""
        with self._lock:
            return list(self._cache)

    def _hit(self, series_id: str) -> SeriesModel | None:
        """A cached model, marked most recently used (the caller holds the lock)."""
        hit = self._cache.get(series_id)
        if hit is None:
            return None
        self._cache.move_to_end(series_id)
        self.stats.hits += 1
        return hit[0]

    def _evict(self) -> None:
        while self._cache and (
            len(self._cache) > self.max_models or self.stats.bytes > self.max_bytes
        ):
            _, (_, size) = self._cache.popitem(last=False)
            self.stats.bytes -= size
            self.stats.evictions += 1
        self.stats.models = len(self._cache)
