"""A scoring drop checked against its dataset spec: types, nulls and value rules.

The target column is optional in a scoring drop (nullable, or absent). Rows failing a rule are
split off with the rule's name; a file that cannot be read as a drop raises ``DropRejected``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.ml.drops import ParsedDrop, decompressed, parse_drop
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.rows import validate_rows


def scoring_spec(spec: DatasetSpec, has_target: bool) -> DatasetSpec:
    """The spec a scoring drop is typed against: the target is optional (nullable) or absent."""
    columns = dict(spec.columns)
    if has_target:
        columns[spec.target] = columns[spec.target].model_copy(update={"nullable": True})
    else:
        columns.pop(spec.target)
    return spec.model_copy(update={"columns": columns})


def _columns_of(name: str, data: bytes) -> list[str] | None:
    """The drop's column names, cheaply (None if it cannot tell: parse_drop will say why)."""
    try:
        if name.lower().endswith((".parquet", ".pq")):
            return pq.read_schema(pa.BufferReader(data)).names
        header = (
            decompressed(name, data)
            .split(b"\n", 1)[0]
            .decode("utf-8")
            .lstrip("\ufeff")
            .rstrip("\r")
        )
        return [h.strip() for h in header.split(",")]
    except Exception:
        return None


def apply_value_rules(parsed: ParsedDrop, sspec: DatasetSpec) -> ParsedDrop:
    """``parsed`` with the rows failing a value rule moved to rejected: the same row rules
    and rule names as ingestion (``validation.rows.validate_rows``), for scoring."""
    check = validate_rows(parsed, sspec, for_scoring=True)
    return ParsedDrop(rows_in=check.rows_in, good=check.kept, rejected=check.quarantined)


def validate(name: str, data: bytes, spec: DatasetSpec) -> ParsedDrop:
    """Type the drop against the scoring spec; rows failing a type, null or value rule are
    rejected with it. Raises ``DropRejected`` for a file that cannot be read as a drop."""
    cols = _columns_of(name, data)
    sspec = scoring_spec(spec, has_target=cols is None or spec.target in cols)
    return apply_value_rules(parse_drop(name, data, sspec, keep_dictionaries=True), sspec)
