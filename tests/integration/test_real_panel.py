"""The daily chain on a real panel: 30 series of Dominick's beer (docs/example-beer.md), and
training alone (``train_local``, the bundled spec) on 200 of them.

The data are not in the repository: set MLOPS_REAL_DATA to a folder holding
dominicks_beer_dev.parquet, or the test is skipped (as in CI, which has no copy).
"""

import json
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pytest
from as_of import as_of_instance

from mlops_assets.definitions import daily_job_name, dataset_definitions
from mlops_assets.domain.model_sets import (
    read_manifest,
    read_release,
    registered_model_name,
    release_pointer,
)
from mlops_assets.domain.sample_drops import choose_series, land_table, read_spec_table
from mlops_assets.domain.training_run import run_table
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.intervals import coverage_field, interval_field
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import series_ids
from mlops_assets.profiles import resources_for

pytestmark = [pytest.mark.integration, pytest.mark.real_data, pytest.mark.slow]

BEER = load_spec("beer")
FILE = "dominicks_beer_dev.parquet"
N_SERIES = 30
N_TRAIN_ONLY = 200
# The panel ends on 1997-05-01: a history drop until 1997-04-03, then one drop a week. The first
# run ingests three drops and leaves two for the second.
N_DROPS = 5
FIRST, SECOND = "1997-04-17", "1997-05-01"


def panel_file() -> Path:
    folder = os.environ.get("MLOPS_REAL_DATA")
    if not folder:
        pytest.skip(
            f"MLOPS_REAL_DATA is not set (a folder holding {FILE}; see docs/example-beer.md)"
        )
    path = Path(folder) / FILE
    if not path.is_file():
        pytest.skip(f"no {FILE} in MLOPS_REAL_DATA={folder} (see docs/example-beer.md)")
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Land the subset, run the daily job for two as-of dates; the runs' results."""
    table = choose_series(read_spec_table(str(panel_file()), BEER), BEER, N_SERIES)
    home = tmp_path_factory.mktemp("beer")
    resources = resources_for("local", home)
    storage = resources["storage"].process_config_and_initialize()
    landed = land_table(storage, BEER, table, n_drops=N_DROPS)
    defs = dg.Definitions.merge(dataset_definitions(BEER), dg.Definitions(resources=resources))
    job = defs.resolve_job_def(daily_job_name(BEER))
    instance = as_of_instance(BEER, FIRST, SECOND)
    runs = {}
    for as_of in (FIRST, SECOND):
        result = job.execute_in_process(partition_key=as_of, instance=instance)
        assert result.success
        runs[as_of] = result
    registry = resources["registry"]
    return {
        "table": table,
        "landed": landed,
        "runs": runs,
        "storage": storage,
        "registry": registry,
    }


def metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    mat = result.asset_materializations_for_node(f"beer__{node}")[0]
    return {k: v.value for k, v in mat.metadata.items()}


def test_the_subset_is_ragged_and_has_short_series(chain):
    table = chain["table"]
    ids = series_ids(table, BEER)
    counts = pc.value_counts(ids).field("counts").to_pylist()
    assert len(counts) == N_SERIES
    assert min(counts) < BEER.min_history + BEER.holdout  # too short for the model today
    ends = table.group_by(["store", "product"]).aggregate([("date", "max")])["date_max"]
    assert len(set(ends.to_pylist())) > 1  # series end at different weeks


def test_every_landed_row_is_curated_or_quarantined(chain):
    first, second = (metadata(chain["runs"][d], "curated") for d in (FIRST, SECOND))
    assert first["drops_consumed"] == 3 and first["drops_deferred"] == 2
    assert second["drops_consumed"] == 2 and second["drops_deferred"] == 0
    rows_in = first["rows_in"] + second["rows_in"]
    assert rows_in == chain["table"].num_rows
    curated = first["rows_curated"] + second["rows_curated"]
    assert curated + first["rows_quarantined"] + second["rows_quarantined"] == rows_in
    assert second["dagster/row_count"] == curated and second["series"] == N_SERIES
    assert first["time_max"] == FIRST and second["time_max"] == SECOND
    for result in chain["runs"].values():
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert all(c.passed for name, c in checks.items() if name != "calendar_gaps")
    # The panel is ragged (no row for a week without sales): the gaps check warns, never blocks.
    gaps = {c.check_name: c for c in chain["runs"][FIRST].get_asset_check_evaluations()}
    assert not gaps["calendar_gaps"].passed
    assert gaps["calendar_gaps"].severity == dg.AssetCheckSeverity.WARN


def test_each_run_registers_one_model_set_version_of_every_series(chain):
    storage, registry = chain["storage"], chain["registry"]
    versions = registry.list_versions(registered_model_name(BEER))
    assert [v.version for v in versions] == [1, 2]
    assert [v.tags["as_of"] for v in versions] == [FIRST, SECOND]
    for as_of, version in zip((FIRST, SECOND), versions, strict=True):
        train = metadata(chain["runs"][as_of], "candidate_models")
        assert train["series_total"] == N_SERIES and train["series_failed"] == 0
        # Every series with data gets a forecast: the backtest's choice, or the fallback chain
        # for a series too short for every candidate; none is skipped.
        assert train["series_skipped"] == 0
        assert train["series_trained"] + train["series_fallback"] == N_SERIES
        assert train["series_trained"] > N_SERIES // 2 and train["series_fallback"] > 0
        assert sum(train["families"].values()) == N_SERIES
        # Out-of-fold coverage: intervals calibrated on the other folds, pooled over the run.
        assert 0 < train["interval_coverage_80"] <= train["interval_coverage_95"] <= 1
        release = read_release(storage, release_pointer(BEER, as_of))
        manifest = read_manifest(storage, release.ref)
        assert manifest.num_rows == N_SERIES == int(version.tags["count_series"])
        assert version.tags["manifest_sha256"] == release.ref.manifest_sha256


def test_the_second_run_compares_with_the_first_runs_champions(chain):
    first = metadata(chain["runs"][FIRST], "evaluation")
    second = metadata(chain["runs"][SECOND], "evaluation")
    assert first["champion_version"] == "none" and first["decision_no_champion"] > 0
    assert second["champion_version"] == 1 and second["decision_no_champion"] == 0
    release = read_release(chain["storage"], release_pointer(BEER, SECOND))
    rows = read_manifest(chain["storage"], release.ref).to_pylist()
    trained = [r for r in rows if r["decision"] != "skipped"]
    assert trained and all(
        r["decision"] in ("better", "not_better", "below_threshold", "below_baseline")
        for r in trained
    )
    # Each decision was made against the champion backtested on the same folds.
    assert all(r["champion_metric"] is not None for r in trained)


def test_training_forecasts_every_series_with_data_and_records_intervals():
    """200 series spread from the shortest to the longest: the backtest chooses a model for
    the long ones, the fallback chain serves the short ones, and each records its intervals."""
    table = choose_series(read_spec_table(str(panel_file()), BEER), BEER, N_TRAIN_ONLY)
    # Intervals are calibrated over the run when its manifest is written, as here.
    results = run_table(train_local(table, BEER, max_workers=2), BEER).to_pandas()
    assert len(results) == N_TRAIN_ONLY
    # Every series of the panel has observed units: every one gets a model.
    assert set(results.status) <= {"trained", "fallback"}
    assert results.model.notna().all() and results.family.notna().all()
    status = results.status.value_counts()
    assert status["trained"] > N_TRAIN_ONLY // 2 and status["fallback"] > 0
    fallback = results[results.status == "fallback"]
    assert set(fallback.family) <= set(BEER.fallback)
    assert fallback.reason.str.contains("fell back to").all()
    chosen = results[results.status == "trained"]
    assert set(chosen.family) <= {*BEER.model.candidate_names, "combination"}
    # The bundled spec combines the candidates: most series mix two or more of them.
    mixed = chosen[chosen.family == "combination"]
    assert len(mixed) > len(chosen) // 2
    for mix in mixed.weights:
        weights = json.loads(mix)
        assert set(weights) <= set(BEER.model.candidate_names) and len(weights) >= 2
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    lo, hi = BEER.intervals.levels
    scored = results[results.n_holdout > 0]
    assert len(scored) > N_TRAIN_ONLY * 0.9
    finite = np.array([np.isfinite(np.asarray(w, float)).all() for w in scored[interval_field(hi)]])
    # Only a series too short for a scale (a handful of rows, served by the fallback) may have
    # no interval; every series the backtest chose a model for has one at each step.
    assert (scored.status[~finite] == "fallback").all() and finite.mean() > 0.95
    with_interval = scored[finite]
    for narrow, wide in zip(
        with_interval[interval_field(lo)], with_interval[interval_field(hi)], strict=True
    ):
        narrow, wide = np.asarray(narrow), np.asarray(wide)
        assert narrow.shape == wide.shape == (BEER.horizon,)
        assert (narrow >= 0).all() and (wide >= narrow).all()
    for level in (lo, hi):
        share = with_interval[coverage_field(level)].to_numpy(float)
        share = share[np.isfinite(share)]
        assert share.size > len(with_interval) // 2 and ((share >= 0) & (share <= 1)).all()
