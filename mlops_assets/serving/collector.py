"""Inference data collection: sampled request records and their answers, as Parquet.

``offer()`` is called on the request path and never blocks: a sampled request is put on a
bounded queue (dropped and counted when full); a background thread groups what it takes into
files of up to ``flush_rows`` rows or ``flush_s`` seconds and writes them atomically to a
``Storage`` (a local root, or the prod Blob container on AKS) as
``inference/<dataset>/date=YYYY-MM-DD/<time>-<host>-<pid>-<n>.parquet`` (the host tells pods
apart): one row per record with
the dataset's columns as the request sent them (typed by the spec: numbers as float64, a
value that is not a number as null; the record as sent is in ``raw``), the prediction and its
interval bounds, model versions and error code, plus ``request_id`` and ``received_at``, and
what production monitoring joins actuals on: the served set's training run (``model_set_run``)
and the series' ``family`` and ``history_end`` from its manifest (looked up on the writer
thread, not on the request path). The
layout is a landing prefix of Parquet drops, so ingestion can read it back; ``read_collected``
does so here. No Dagster imports.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.storage import LocalStorage, Storage

log = logging.getLogger("mlops.serving.collector")
PROVENANCE = ("model_set_run", "family", "history_end")
Provenance = Callable[[str], dict]


def collected_prefix(dataset: str) -> str:
    return f"inference/{dataset}"


class Collector:
    def __init__(
        self,
        root: str | Storage,
        dataset: str,
        sample_rate: float,
        *,
        max_queue: int = 1_000,
        flush_rows: int = 5_000,
        flush_s: float = 2.0,
        seed: int | None = None,
        columns: dict[str, str] | None = None,
        bounds: list[str] | None = None,
    ):
        self.storage = root if isinstance(root, Storage) else LocalStorage(str(root))
        self.dataset = dataset
        # Request columns kept, typed: "float" or "string" (the dataset's columns).
        self.columns = columns or {}
        self.bounds = bounds or []  # interval bound fields of a result (prediction_lower_80)
        self.schema = pa.schema(
            [
                pa.field(c, pa.float64() if k == "float" else pa.string())
                for c, k in self.columns.items()
            ]
            + [
                pa.field("series_id", pa.string()),
                pa.field("prediction", pa.float64()),
                *(pa.field(b, pa.float64()) for b in self.bounds),
                pa.field("model_version", pa.string()),
                pa.field("model_set_version", pa.string()),
                pa.field("model_set_run", pa.string()),
                pa.field("family", pa.string()),
                pa.field("history_end", pa.string()),
                pa.field("error", pa.string()),
                pa.field("request_id", pa.string()),
                pa.field("received_at", pa.timestamp("us", tz="UTC")),
                pa.field("raw", pa.string()),
            ]
        )
        self.sample_rate = sample_rate
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._n = 0
        self.stats = {"offered": 0, "sampled": 0, "dropped": 0, "rows_written": 0, "files": 0}
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="inference-collector", daemon=True)
        self._thread.start()

    def offer(
        self,
        records: list,
        results: list[dict],
        version: str,
        request_id: str,
        provenance: Provenance | None = None,
    ) -> bool:
        """Maybe queue one request's records and results; never blocks. True if queued.

        ``provenance(series_id)`` gives the row's ``model_set_run``, ``family`` and
        ``history_end`` (called when the batch is written)."""
        self.stats["offered"] += 1
        if self.sample_rate <= 0 or self._rng.random() >= self.sample_rate:
            return False
        self.stats["sampled"] += 1
        try:
            self._q.put_nowait((records, results, version, request_id, time.time(), provenance))
            return True
        except queue.Full:
            self.stats["dropped"] += 1
            return False

    def _loop(self) -> None:
        batch: list = []
        rows = 0
        deadline = time.monotonic() + self.flush_s
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._q.get(timeout=min(timeout, 0.2))
                batch.append(item)
                rows += len(item[0])
            except queue.Empty:
                pass
            stopping = self._stop.is_set() and self._q.empty()
            if batch and (rows >= self.flush_rows or time.monotonic() >= deadline or stopping):
                try:
                    self._write(batch)
                except Exception:  # never let collection hurt serving
                    self.errors += 1
                    log.exception("writing collected inference data failed")
                batch, rows = [], 0
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_s
            if stopping:
                return

    def _write(self, batch: list) -> None:
        flat: list[dict] = []
        for records, results, version, request_id, at, provenance in batch:
            received = datetime.fromtimestamp(at, UTC)
            for rec, res in zip(records, results, strict=False):
                rec = rec if isinstance(rec, dict) else {}
                row = {c: _coerce(rec.get(c), kind) for c, kind in self.columns.items()}
                sid = res.get("series_id")
                known = provenance(sid) if provenance is not None and sid else {}
                flat.append(
                    {
                        **row,
                        **{k: known.get(k) for k in PROVENANCE},
                        **{b: res.get(b) for b in self.bounds},
                        "series_id": sid,
                        "prediction": res.get("prediction"),
                        "model_version": res.get("model_version"),
                        "model_set_version": version,
                        "error": res.get("error"),
                        "request_id": request_id,
                        "received_at": received,
                        "raw": json.dumps(rec, default=str)[:10_000],
                    }
                )
        if not flat:
            return
        table = pa.Table.from_pylist(flat, schema=self.schema)
        now = datetime.now(UTC)
        self._n += 1
        name = (
            f"{collected_prefix(self.dataset)}/date={now:%Y-%m-%d}/"
            f"{now:%H%M%S%f}-{socket.gethostname()}-{os.getpid()}-{self._n:05d}.parquet"
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.storage.write_bytes(name, buf.getvalue(), overwrite=False)
        self.stats["rows_written"] += table.num_rows
        self.stats["files"] += 1

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the thread."""
        self._stop.set()
        self._thread.join(timeout)


def _coerce(value, kind: str):
    if value is None:
        return None
    if kind == "float":
        if isinstance(value, bool):
            return float(value)
        try:
            v = float(value)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def read_collected(root: str | Path, dataset: str) -> pa.Table:
    """Every collected row of ``dataset`` under ``root`` (empty table if none)."""
    base = Path(root) / collected_prefix(dataset)
    files = sorted(p for p in base.rglob("*.parquet") if not p.name.startswith(".tmp-"))
    if not files:
        return pa.table({})
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")
