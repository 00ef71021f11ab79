"""Small Arrow helpers shared by ingestion, training and scoring."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.spec import DatasetSpec


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns as plain ones (for CSV writers and Spark)."""
    fields = [
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _plain_column(col):
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def series_ids(table: pa.Table, spec: DatasetSpec) -> pa.Array:
    """``spec.series_id`` of every row, vectorised: ``store=S0001/product=P001``."""
    parts = []
    for i, k in enumerate(spec.series_keys):
        col = pc.cast(_plain_column(table[k]), pa.string())
        parts.append(pc.binary_join_element_wise(("/" if i else "") + k, col, "="))
    out = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "")
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def series_fingerprints(table: pa.Table, spec: DatasetSpec) -> pa.Table:
    """Per series: rows, last time and a checksum of the target and features.

    Two trainings of a series saw the same data exactly when the fingerprints are equal, which
    is how a run retrains only the series whose data changed.
    """
    cols = [spec.target, *spec.features.exogenous]
    sums = {}
    for c in cols:
        values = pc.cast(table[c], pa.float64()).to_numpy(zero_copy_only=False)
        sums[c] = pa.array(np.round(np.nan_to_num(values, nan=0.0) * 1000.0))
    keys = {k: _plain_column(table[k]) for k in spec.series_keys}
    keyed = pa.table({**keys, "_t": table[spec.time], **sums})
    agg = keyed.group_by(spec.series_keys).aggregate(
        [("_t", "count"), ("_t", "max"), *((c, "sum") for c in cols)]
    )
    digest = pc.cast(agg["_t_count"], pa.string())
    digest = pc.binary_join_element_wise(digest, pc.cast(agg["_t_max"], pa.string()), "|")
    for c in cols:
        digest = pc.binary_join_element_wise(digest, pc.cast(agg[f"{c}_sum"], pa.string()), "|")
    return pa.table(
        {
            "series_id": series_ids(agg, spec),
            "n_rows": agg["_t_count"],
            "data_end": pc.cast(agg["_t_max"], pa.string()),
            "data_fingerprint": digest,
        }
    ).sort_by("series_id")


def series_codes(table: pa.Table, keys: list[str]) -> np.ndarray:
    """An int64 per row that orders rows like sorting by the key columns; equal keys, equal code."""
    code = np.zeros(table.num_rows, dtype=np.int64)
    for k in keys:
        enc = pc.dictionary_encode(table[k]).combine_chunks()
        dictionary = enc.dictionary.to_numpy(zero_copy_only=False)
        ranks = np.empty(len(dictionary), dtype=np.int64)
        ranks[np.argsort(dictionary, kind="stable")] = np.arange(len(dictionary))
        code = code * len(dictionary) + ranks[enc.indices.to_numpy(zero_copy_only=False)]
    return code
