"""A scoring drop checked against its dataset spec: types, nulls and value rules.

The target column is optional in a scoring drop (nullable, or absent). Rows failing a rule are
split off with the rule's name; a file that cannot be read as a drop raises ``DropRejected``.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.ml.drops import ParsedDrop, parse_drop, split_failures
from mlops_assets.ml.spec import ColumnType, DatasetSpec


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
            return pq.read_schema(io.BytesIO(data)).names
        header = data.split(b"\n", 1)[0].decode("utf-8").lstrip("\ufeff").rstrip("\r")
        return [h.strip() for h in header.split(",")]
    except Exception:
        return None


def _within(values: pa.ChunkedArray, col) -> bool:
    """Whether every value of a numeric column passes its rules, in one or two reductions."""
    lo, hi = (v.as_py() for v in pc.min_max(values, skip_nulls=True).values())
    if lo is None:
        return True
    if (col.min is not None and lo < col.min) or (col.max is not None and hi > col.max):
        return False
    if col.allowed:
        allowed = {float(a) for a in col.allowed}
        seen = [v for v in pc.unique(values).to_pylist() if v is not None and v == v]
        return all(float(v) in allowed for v in seen)
    return True


def _value_rules(table: pa.Table, spec: DatasetSpec) -> list[tuple[str, str, np.ndarray]]:
    """min/max/allowed of every column but the target, on typed values (nulls pass).

    Each rule is first checked with one Arrow reduction; a row mask is built only for a rule
    that some row fails.
    """
    checks = []
    for cname, col in spec.columns.items():
        if cname == spec.target or cname not in table.column_names:
            continue
        values = table[cname]
        if col.type in (ColumnType.float, ColumnType.int) and (
            col.min is not None or col.max is not None or col.allowed
        ):
            if _within(values, col):
                continue
            if col.min is not None:
                checks.append(("range.min", cname, pc.less(values, col.min)))
            if col.max is not None:
                checks.append(("range.max", cname, pc.greater(values, col.max)))
            if col.allowed:
                allowed = pa.array([float(a) for a in col.allowed])
                number = pc.cast(values, pa.float64())
                outside = pc.invert(pc.or_(pc.is_in(number, allowed), pc.is_nan(number)))
                checks.append(("allowed", cname, pc.and_(outside, pc.is_valid(values))))
        elif col.allowed:
            text = (
                pc.cast(values, pa.string())
                if not pa.types.is_dictionary(values.type)
                else (values.cast(values.type.value_type))
            )
            outside = pc.invert(pc.is_in(text, pa.array(col.allowed)))
            checks.append(("allowed", cname, pc.and_(outside, pc.is_valid(values))))
    failures = []
    for rule, cname, failed in checks:
        failed = failed.fill_null(False)  # a null is not a value rule's business
        if pc.any(failed).as_py():
            failures.append((rule, cname, failed.to_numpy(zero_copy_only=False)))
    return failures


def apply_value_rules(parsed: ParsedDrop, sspec: DatasetSpec) -> ParsedDrop:
    """``parsed`` with the rows failing a value rule (``_value_rules``) moved to rejected."""
    failures = _value_rules(parsed.good, sspec)
    if not failures:
        return parsed
    more = split_failures(parsed.good, None, failures, sspec)
    rejected = pa.concat_tables(
        [parsed.rejected, more.rejected.select(parsed.rejected.column_names)]
    )
    return ParsedDrop(rows_in=parsed.rows_in, good=more.good, rejected=rejected)


def validate(name: str, data: bytes, spec: DatasetSpec) -> ParsedDrop:
    """Type the drop against the scoring spec; rows failing a type, null or value rule are
    rejected with it. Raises ``DropRejected`` for a file that cannot be read as a drop."""
    cols = _columns_of(name, data)
    sspec = scoring_spec(spec, has_target=cols is None or spec.target in cols)
    return apply_value_rules(parse_drop(name, data, sspec, keep_dictionaries=True), sspec)
