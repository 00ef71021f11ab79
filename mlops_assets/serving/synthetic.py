"""Model sets for tests, benchmarks and the QA load profile, without a training run.

``real_model_set`` trains a few series of the bundled sales generator with the training code;
``synthetic_model_set`` clones those models into many series (each with its own perturbed
intercept, history tail and sha256), so a 10,000-model set takes well under a second to build.
Both write the model-set format (manifest + packs) under a local folder, in the layout a
registry version or an ``AZUREML_MODEL_DIR`` holds. No Dagster or Azure imports.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mlops_assets.domain import model_sets as ms
from mlops_assets.ml import modelset, persistence
from mlops_assets.ml.engines import train_series_frame
from mlops_assets.ml.features import tail_length, to_series_frame
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import LocalStorage


def write_model_set(root: str | Path, folder: str, results: pa.Table, version: str) -> pa.Table:
    """Pack ``results`` (training records with a ``model`` column) into ``root/folder`` as the
    set ``version`` of ``sales-models`` (its ref next to the manifest). Returns the manifest."""
    manifest, packs = modelset.pack_models(results, folder, pack_bytes=8 << 20)
    ms.write_model_set(
        LocalStorage(root), manifest, packs, name="sales-models", version=version, folder=folder
    )
    return manifest


def model_set_ref(root: str | Path, folder: str) -> ms.ModelSetRef:
    """The ref of the set written under ``root/folder``."""
    return ms.read_ref_file(LocalStorage(root), folder)


def train_records(spec: DatasetSpec, n_series: int, n_periods: int = 120, seed: int = 0):
    """(training records as a pa.Table, the sales data) for ``n_series`` generated series."""
    data = sales_table(SalesShape(n_series, n_periods, seed))
    frame = to_series_frame(data, spec)
    records, _ = train_series_frame(frame, spec)
    return pa.Table.from_pylist(records), data


def real_model_set(
    root: str | Path, folder: str, spec: DatasetSpec, n_series: int = 20, version: str = "v1"
) -> tuple[pa.Table, pa.Table]:
    """Train ``n_series`` sales series and write them as a model set. Returns (manifest, data)."""
    results, data = train_records(spec, n_series)
    results = results.append_column("trained_in", pa.array([version] * results.num_rows))
    return write_model_set(root, folder, results, version), data


def synthetic_model_set(
    root: str | Path,
    folder: str,
    spec: DatasetSpec,
    n_series: int = 10_000,
    version: str = "v1",
    seed: int = 0,
    templates: int = 8,
) -> pa.Table:
    """``n_series`` models cloned from ``templates`` trained ones, each distinct. Returns the
    manifest; series are named like the sales generator's (``store=S0000/product=P000``)."""
    base, _ = train_records(spec, templates, seed=seed)
    rows = base.to_pylist()
    models = [persistence.as_pipeline(persistence.loads(r["model"])) for r in rows]
    rng = np.random.default_rng(seed)
    n_products = min(n_series, 100)
    k = tail_length(spec)
    end = pd.Timestamp(rows[0]["history_end"])
    out = []
    for i in range(n_series):
        t = i % templates
        model = copy.deepcopy(models[t]) if i >= templates else models[t]
        if i >= templates:
            model[-1].intercept_ = float(model[-1].intercept_) + float(rng.normal(0, 1))
        data = persistence.dumps(model)
        store, product = f"S{i // n_products:04d}", f"P{i % n_products:03d}"
        tail = np.asarray(rows[t]["history_tail"], float)[-k:] * float(rng.uniform(0.5, 1.5))
        out.append(
            {
                "series_id": spec.series_id((store, product)),
                "store": store,
                "product": product,
                "status": "trained",
                "reason": None,
                "model": data,
                "model_sha256": persistence.sha256(data),
                "history_end": str(end.date()),
                "history_tail": tail.tolist(),
                "trained_in": version,
            }
        )
    return write_model_set(root, folder, pa.Table.from_pylist(out), version)


def request_rows(
    spec: DatasetSpec, manifest: pa.Table, series: list[str], periods: int = 1
) -> list[dict]:
    """Valid request records: the ``periods`` weeks after each series' history end."""
    cols = manifest.select(["series_id", "history_end"]).to_pydict()
    end = dict(zip(cols["series_id"], cols["history_end"], strict=True))
    rows = []
    for sid in series:
        keys = dict(part.split("=", 1) for part in sid.split("/"))
        weeks = pd.date_range(pd.Timestamp(end[sid]), periods=periods + 1, freq=spec.frequency)
        for j, w in enumerate(weeks[1:]):
            row: dict[str, object] = {**keys, spec.time: str(w.date())}
            for c in spec.features.exogenous:
                row[c] = 1 if c == "promo" and j % 3 == 0 else (0 if c == "promo" else 9.5)
            rows.append(row)
    return rows
