"""Read one landed drop file into a typed Arrow table, or say exactly why it cannot be read.

Drops are CSV (plain, ``.csv.gz`` or ``.csv.zst``) or Parquet. File-level problems (unreadable,
empty, binary content, wrong delimiter or encoding, missing or extra columns) raise
``DropRejected``; the whole file goes to quarantine. Row-level problems (a value that does
not parse as its column's type, a null key) come back as quarantined rows
(``ParsedDrop.rejected``) with the rule, column, value and source row number, so nothing is
silently dropped. Rule names are ``validation.rules``'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_assets.ml.sniff import (
    SNIFF_BYTES,
    binary_kind,
    magic_of,
    text_start,
    utf16_without_bom,
)
from mlops_assets.ml.spec import ColumnType, DatasetSpec
from mlops_assets.ml.validation.rules import Rule, type_rule

ROW = "_row"  # 1-based line number in a CSV (header is line 1), 0-based row index in Parquet
REJECT_COLUMNS = ("_rule", "_column", "_value", "_message")
FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.zst": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSION = {".gz": "gzip", ".zst": "zstd"}  # pyarrow's codec names


class DropRejected(Exception):
    """The whole file cannot be curated and goes to quarantine; ``rule`` names the file- or
    drop-level rule that failed (a ``validation.rules`` name)."""

    def __init__(
        self,
        name: str,
        rule: str,
        message: str,
        column: str | None = None,
        rows: int | None = None,
    ):
        self.name, self.rule, self.column = name, str(rule), column
        self.rows = rows  # rows the file was read to hold (None: it could not be read)
        super().__init__(f"{name}: {message} [rule: {rule}]")

    @property
    def message(self) -> str:
        return str(self)

    def as_dict(self) -> dict:
        return {"file": self.name, "rule": self.rule, "column": self.column, "message": str(self)}


@dataclass
class ParsedDrop:
    rows_in: int
    good: pa.Table  # typed to the spec's schema, plus ROW
    rejected: pa.Table  # source columns as strings, plus ROW and REJECT_COLUMNS

    @property
    def rows_rejected(self) -> int:
        return self.rejected.num_rows


def drop_format(name: str) -> str | None:
    for ext, fmt in FORMATS.items():
        if name.lower().endswith(ext):
            return fmt
    return None


def decompressed(name: str, data: bytes) -> bytes:
    """A ``.csv.gz`` or ``.csv.zst`` drop's bytes decompressed (others as they are)."""
    codec = next((c for ext, c in COMPRESSION.items() if name.lower().endswith(ext)), None)
    if codec is None:
        return data
    try:
        return pa.input_stream(pa.py_buffer(data), compression=codec).read()
    except (OSError, pa.ArrowInvalid) as e:
        magic = magic_of(data)
        found = magic.what if magic else f"it starts with {text_start(data)!r}"
        raise DropRejected(
            name,
            Rule.FILE_READABLE,
            f"the file is named as {codec}-compressed but is not a readable {codec} stream "
            f"({found}; {e}); name it for what it is (.csv, .csv.gz, .csv.zst, .parquet)",
        ) from None


def _read_csv(name: str, data: bytes) -> tuple[pa.Table, int]:
    data = decompressed(name, data)
    if not data.strip():
        raise DropRejected(name, Rule.FILE_NOT_EMPTY, "the file is empty (0 bytes of data)")
    if (what := binary_kind(data)) is not None:
        raise DropRejected(name, Rule.FILE_FORMAT, f"the file is not a CSV: it is {what}")
    if (bom := data[:2] in (b"\xff\xfe", b"\xfe\xff")) or utf16_without_bom(data[:SNIFF_BYTES]):
        how = "a UTF-16 byte-order mark" if bom else "a zero byte beside each character"
        raise DropRejected(
            name,
            Rule.FILE_ENCODING,
            f"the file is UTF-16 text ({how}), not UTF-8; re-export it as UTF-8",
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DropRejected(
            name,
            Rule.FILE_ENCODING,
            f"the file is not UTF-8 (byte {e.start} is invalid: {data[e.start]:#04x}, maybe "
            "Latin-1 or Windows-1252); re-export as UTF-8",
        ) from None
    header = data.split(b"\n", 1)[0].decode("utf-8").lstrip("\ufeff")
    names = [h.strip() for h in header.rstrip("\r").split(",")]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),  # reads the bytes in place, no copy
            read_options=pacsv.ReadOptions(use_threads=True),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except pa.ArrowInvalid as e:
        raise DropRejected(name, Rule.FILE_READABLE, f"not a readable CSV file: {e}") from None
    return table, 2  # data rows start on line 2


def dictionary_keys(spec: DatasetSpec) -> list[str]:
    """The series keys a Parquet drop's reader takes as Arrow dictionaries (the text ones)."""
    return [k for k in spec.series_keys if spec.columns[k].type == ColumnType.string]


def _read_parquet(name: str, data: bytes, dictionary: Sequence[str] = ()) -> tuple[pa.Table, int]:
    """The file's rows; the ``dictionary`` text columns (series keys) read as Arrow
    dictionaries, as Parquet usually stores them: no string per row is built (40M rows:
    ~0.6 s instead of ~1.7 s). Columns that are not text, or absent, are read as they are."""
    if not data:
        raise DropRejected(name, Rule.FILE_NOT_EMPTY, "the file is empty (0 bytes of data)")
    if not data.startswith(b"PAR1"):
        what = binary_kind(data) or f"text starting {text_start(data)!r} (name it .csv if CSV)"
        raise DropRejected(
            name, Rule.FILE_FORMAT, f"the file is not Parquet (no PAR1 magic number): it is {what}"
        )
    if not data.endswith(b"PAR1"):
        raise DropRejected(
            name,
            Rule.FILE_READABLE,
            f"the Parquet file is truncated: it has no closing PAR1 footer ({len(data):,} bytes "
            "landed); land the whole file again",
        )
    try:
        # ``BufferReader`` reads the bytes in place: no copy of the file (~160 MB for a 40M-row
        # drop, each page of which a virtual machine makes costly to touch the first time).
        table = pq.read_table(pa.BufferReader(data), read_dictionary=list(dictionary) or None)
        # One dictionary per column, not one per row group: grouping and taking rows need it.
        return (table.unify_dictionaries() if dictionary else table), 0
    except (pa.ArrowInvalid, OSError) as e:
        raise DropRejected(
            name, Rule.FILE_READABLE, f"not a readable Parquet file (corrupt?): {e}"
        ) from None


def _case_matches(missing: list[str], have: list[str]) -> list[str]:
    """``'Store' -> 'store'`` for each found column that is a missing one but for case or
    surrounding spaces."""
    by_folded = {h.strip().casefold(): h for h in have}
    return [f"{by_folded[m.casefold()]!r} -> {m!r}" for m in missing if m.casefold() in by_folded]


def check_columns(name: str, table: pa.Table, spec: DatasetSpec) -> None:
    have, want = table.column_names, list(spec.columns)
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in spec.columns]
    if missing and len(have) == 1 and any(d in have[0] for d in ";\t|"):
        delim = next(d for d in ";\t|" if d in have[0])
        raise DropRejected(
            name,
            Rule.FILE_DELIMITER,
            f"the header is one column {have[0][:60]!r}: the file looks {delim!r}-delimited; "
            "drops must be comma-separated",
        )
    if missing:
        renames = _case_matches(missing, extra)
        raise DropRejected(
            name,
            Rule.SCHEMA_MISSING_COLUMN,
            f"missing column(s) {missing}; the file has {have}; expected exactly {want}"
            + (
                f"; these differ only in case or spaces, rename them: {', '.join(renames)}"
                if renames
                else ""
            ),
            column=missing[0],
        )
    if extra:
        raise DropRejected(
            name,
            Rule.SCHEMA_EXTRA_COLUMN,
            f"unexpected column(s) {extra}; expected exactly {want} (add them to the spec "
            "to accept them)",
            column=extra[0],
        )


def _as_strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _coerce(
    col: pa.ChunkedArray, ctype: ColumnType, keep_dictionary: bool = False
) -> tuple[pa.Array | pa.ChunkedArray, np.ndarray | None]:
    """Cast ``col`` to ``ctype``; return the values and a mask of values that did not parse
    (None: every value parsed, the usual case; no mask the size of the column is made).

    With ``keep_dictionary``, a dictionary-encoded text column stays encoded (only its
    dictionary is typed): a key column of 40M rows and 10,000 values is not decoded.
    """
    target = ctype.arrow
    if keep_dictionary and pa.types.is_dictionary(col.type) and pa.types.is_string(target):
        if not pa.types.is_string(col.type.value_type):
            col = col.cast(pa.dictionary(col.type.index_type, pa.string()))
        return col, None
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    try:
        out = col if col.type == target else pc.cast(col, target)
        return out, None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    s = pd.Series(_as_strings(col).to_numpy(zero_copy_only=False), dtype=object)
    s = s.str.strip()
    if ctype in (ColumnType.float, ColumnType.int):
        parsed = pd.to_numeric(s, errors="coerce")
        if ctype is ColumnType.int:
            bad_int = parsed.notna() & (parsed != np.round(parsed))
            parsed = parsed.where(~bad_int)
    elif ctype in (ColumnType.date, ColumnType.timestamp):
        parsed = pd.to_datetime(s, errors="coerce", format="ISO8601")
        if ctype is ColumnType.date:
            parsed = parsed.dt.date
    elif ctype is ColumnType.bool:
        parsed = s.str.lower().map({"true": True, "false": False, "1": True, "0": False})
    else:
        parsed = s
    bad = (parsed.isna() & s.notna()).to_numpy()
    values = pa.array(parsed.where(~bad, None), type=target, from_pandas=True)
    return values, bad


def parse_drop(
    name: str, data: bytes, spec: DatasetSpec, keep_dictionaries: bool = False
) -> ParsedDrop:
    """Type a drop's rows to the spec; rows that don't type are returned as rejected.

    ``keep_dictionaries`` keeps dictionary-encoded text columns (Parquet's usual encoding of
    keys) encoded in ``good``; its schema then has dictionary types where the file had them.
    """
    fmt = drop_format(name)
    if fmt is None:
        raise DropRejected(
            name, Rule.FILE_FORMAT, f"unknown file type; drops must end in {sorted(FORMATS)}"
        )
    if fmt == "csv":
        raw, first_row = _read_csv(name, data)
    else:
        keys = dictionary_keys(spec) if keep_dictionaries else []
        raw, first_row = _read_parquet(name, data, keys)
    try:
        check_columns(name, raw, spec)
    except DropRejected as err:
        err.rows = raw.num_rows  # readable, so its rows are known (quarantined with it)
        raise
    if raw.num_rows == 0:
        raise DropRejected(name, Rule.FILE_HAS_ROWS, "the file has a header but no rows", rows=0)
    return type_rows(raw, spec, first_row, keep_dictionaries)


def type_rows(
    raw: pa.Table, spec: DatasetSpec, first_row: int = 0, keep_dictionaries: bool = False
) -> ParsedDrop:
    """``parse_drop``'s row typing on rows already read (a whole file or one batch of it, whose
    first row is number ``first_row``); the columns must be the spec's (``check_columns``)."""
    n = raw.num_rows
    rows = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    failures: list[tuple[str, str, np.ndarray]] = []
    typed = {}
    fields = []
    for cname, col in spec.columns.items():
        values, bad = _coerce(raw[cname], col.type, keep_dictionaries)
        fields.append(pa.field(cname, values.type, nullable=col.nullable))
        typed[cname] = values
        if bad is not None and bad.any():
            failures.append((type_rule(col.type.value), cname, bad))
        if not col.nullable and values.null_count:
            null = values.is_null().to_numpy(zero_copy_only=False)
            if bad is not None:
                null = null & ~bad
            if null.any():
                failures.append((Rule.NOT_NULL, cname, null))
    schema = spec.arrow_schema if not keep_dictionaries else pa.schema(fields)
    good = pa.table({**typed, ROW: rows}, schema=schema.append(pa.field(ROW, pa.int64())))
    return split_failures(good, raw, failures, spec)


def split_failures(
    typed: pa.Table,
    raw: pa.Table | None,
    failures: list[tuple[str, str, np.ndarray]],
    spec: DatasetSpec,
    rows_in: int | None = None,
) -> ParsedDrop:
    """Split rows by failure masks (first failing rule wins) into good and rejected tables.

    ``raw`` supplies the original text of rejected rows; without it the typed values are used.
    """
    n = typed.num_rows
    if not failures:
        return ParsedDrop(
            rows_in=rows_in if rows_in is not None else n,
            good=typed,
            rejected=pa.table(
                {
                    **{c: pa.array([], pa.string()) for c in spec.columns},
                    ROW: pa.array([], pa.int64()),
                    **{c: pa.array([], pa.string()) for c in REJECT_COLUMNS},
                }
            ),
        )
    first = np.full(n, -1, dtype=np.int16)  # index of the first failing rule of each row
    for i, (_r, _c, mask) in enumerate(failures):
        first[mask & (first < 0)] = i
    rejected_mask = first >= 0
    good = typed.filter(pa.array(~rejected_mask)) if rejected_mask.any() else typed
    source = raw if raw is not None else typed
    idx = np.flatnonzero(rejected_mask)
    rule = np.array([r for r, _c, _m in failures] + [None], dtype=object)[first[idx]]
    column = np.array([c for _r, c, _m in failures] + [None], dtype=object)[first[idx]]
    rejected_cols = {c: _as_strings(source[c].take(idx)) for c in spec.columns}
    rejected_cols[ROW] = typed[ROW].take(idx)
    texts = {c: rejected_cols[c].to_pylist() for c in spec.columns}
    values = [texts[c][i] if c in texts else None for i, c in enumerate(column)]
    rejected_cols["_rule"] = pa.array(rule.tolist(), type=pa.string())
    rejected_cols["_column"] = pa.array(column.tolist(), type=pa.string())
    rejected_cols["_value"] = pa.array(values, type=pa.string())
    rejected_cols["_message"] = pa.array(
        _row_messages(rejected_cols[ROW].to_pylist(), idx, failures, texts), type=pa.string()
    )
    return ParsedDrop(
        rows_in=rows_in if rows_in is not None else n,
        good=good,
        rejected=pa.table(rejected_cols),
    )


def _row_messages(
    row_numbers: list[int],
    idx: np.ndarray,
    failures: list[tuple[str, str, np.ndarray]],
    texts: dict[str, list],
) -> list[str]:
    """One message per rejected row naming every (column, rule) it fails, the first first
    (the row's ``_rule`` and ``_column``)."""
    found: list[list[str]] = [[] for _ in idx]
    for r, c, mask in failures:
        for j in np.flatnonzero(mask[idx]):
            v = texts[c][j] if c in texts else None
            found[j].append(f"column {c!r}: value {v!r} fails rule {r}")
    return [
        f"row {rn}, {parts[0]}"
        if len(parts) == 1
        else f"row {rn}, {len(parts)} columns fail: " + "; ".join(parts)
        for rn, parts in zip(row_numbers, found, strict=True)
    ]
