"""Landing a Parquet file of a spec's columns as drops: ``mlops land`` and its helpers."""

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_assets.cli import main
from mlops_assets.domain.sample_drops import choose_series, land_table, read_spec_table
from mlops_assets.ml.drops import parse_drop
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import series_ids
from mlops_assets.storage import LocalStorage

BEER = load_spec("beer")


def panel(n_series: int = 12) -> pd.DataFrame:
    """A ragged beer-like panel: series i has 3 + 4 i Thursday weeks, ending at different weeks."""
    weeks = pd.date_range("1995-01-05", periods=60, freq="W-THU")
    frames = []
    for i in range(n_series):
        length = 3 + 4 * i
        when = weeks[len(weeks) - length - i % 3 : len(weeks) - i % 3]
        frames.append(
            pd.DataFrame(
                {
                    "store": str(i % 4),
                    "product": f"{1000 + i}",
                    "date": when,  # a timestamp, as in the converted panel
                    "price": 1.99,
                    "units": np.arange(len(when), dtype=float),
                    "extra": 0,  # columns outside the spec are dropped
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_choose_series_is_deterministic_and_spans_short_to_long():
    table = pa.Table.from_pandas(panel(), preserve_index=False)
    picked = choose_series(table, BEER, 4)
    ids = sorted(set(series_ids(picked, BEER).to_pylist()))
    assert ids == sorted(set(series_ids(choose_series(table, BEER, 4), BEER).to_pylist()))
    lengths = sorted(pd.Series(series_ids(picked, BEER).to_pylist()).value_counts())
    assert len(ids) == 4 and lengths[0] == 3 and lengths[-1] == 3 + 4 * 11
    assert choose_series(table, BEER, 100).num_rows == table.num_rows


def test_land_cli_splits_a_file_into_a_history_drop_and_weekly_drops(tmp_path, monkeypatch):
    source = tmp_path / "panel.parquet"
    df = panel()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), source)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_PROFILE", "local")
    assert main(["land", "--dataset", "beer", "--file", str(source), "--drops", "3"]) == 0
    storage = LocalStorage(root=str(tmp_path / "home" / "storage"))
    names = [b.name for b in storage.list("landing/beer/")]
    assert names == [
        "landing/beer/history_until_1996-02-08.parquet",
        "landing/beer/week_1996-02-15.parquet",
        "landing/beer/week_1996-02-22.parquet",
    ]
    parsed = [parse_drop(n, storage.read_bytes(n), BEER) for n in names]
    assert all(p.rows_rejected == 0 for p in parsed)
    assert sum(p.good.num_rows for p in parsed) == len(df)
    assert {d for p in parsed[1:] for d in p.good["date"].to_pylist()} == {
        date(1996, 2, 15),
        date(1996, 2, 22),
    }


def test_a_file_without_the_specs_columns_is_refused(tmp_path):
    source = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"store": ["1"], "week": [date(1995, 1, 5)]}), source)
    with pytest.raises(ValueError, match="lacks the beer spec's columns"):
        read_spec_table(str(source), BEER)
    assert main(["land", "--dataset", "beer", "--file", str(source)]) == 2


def test_land_table_with_one_drop_lands_everything_in_one_file(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    table = pa.Table.from_pandas(panel(3), preserve_index=False).drop_columns(["extra"])
    landed = land_table(storage, BEER, table.cast(BEER.arrow_schema), n_drops=1)
    assert [b.name for b in landed] == ["landing/beer/history_until_1996-02-22.parquet"]


def test_a_failing_command_says_why_in_one_line_and_the_stack_only_with_debug(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    missing = str(tmp_path / "nowhere.yaml")
    assert main(["land", "x.csv", "--dataset", missing]) == 1
    err = capsys.readouterr().err
    assert f"mlops land failed: FileNotFoundError: no dataset spec at {missing}" in err
    assert "Traceback" not in err and "mlops --debug" in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "land", "x.csv", "--dataset", missing])
