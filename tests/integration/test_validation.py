"""The validation gate end to end: bad drops quarantined, blocking checks stop training."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow.compute as pc
import pytest
from as_of import as_of_instance

from mlops_assets.assets.checks import GAPS_CHECK
from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.ledger import DropLedger
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.domain.validation_report import QUARANTINE
from mlops_assets.ml.sample_data import BAD_KINDS, SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.ml.validation.rules import CONCERNS
from mlops_assets.run_report import explain_failure
from mlops_assets.storage import LocalStorage

pytestmark = pytest.mark.integration

AS_OF = "2026-11-20"
SHAPE = SalesShape(n_series=6, n_periods=80)

# Where each bad kind must end: a whole file in quarantine, or rows, and the rule that says why.
EXPECTED = {
    "missing_column": ("file", "schema.missing_column", "schema"),
    "extra_column": ("file", "schema.extra_column", "schema"),
    "wrong_types": ("rows", "type.float", "schema"),
    "empty_file": ("file", "file.not_empty", "schema"),
    "header_only": ("file", "file.has_rows", "schema"),
    "truncated_parquet": ("file", "file.readable", "schema"),
    "other_delimiter": ("file", "file.delimiter", "schema"),
    "other_encoding": ("file", "file.encoding", "schema"),
    "nan_inf": ("rows", "values.finite", "values"),
    "negative_target": ("rows", "values.range", "values"),
    "duplicate_key_time": ("rows", "unique.key_time", "keys"),
    "future_timestamps": ("rows", "time.not_future", "freshness"),
    "ancient_timestamps": ("rows", "time.earliest", "freshness"),
    "off_calendar_timestamps": ("rows", "time.off_calendar", "freshness"),
    "distribution_shift": ("file", "drift.sales.", "distribution"),
    "unknown_category": ("rows", "values.allowed", "values"),
}


def _probe(spec, executed: list):
    @dg.asset(
        key=[spec.name, "train_probe"],
        deps=[dg.AssetKey([spec.name, "curated"])],
        partitions_def=build_ingestion_asset(spec).partitions_def,
    )
    def train_probe() -> None:
        executed.append(True)

    return train_probe


def _run(spec, storage, executed):
    return dg.materialize(
        [build_ingestion_asset(spec), _probe(spec, executed)],
        partition_key=AS_OF,
        instance=as_of_instance(spec, AS_OF),
        resources={"storage": storage},
        raise_on_error=False,
    )


def _checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture()
def world(tmp_path):
    spec = load_spec("sales")
    storage = LocalStorage(root=str(tmp_path / "storage"))
    land_sales(storage, spec, SHAPE, n_drops=1)
    executed: list = []
    first = _run(spec, storage, executed)
    assert first.success and executed, "good history must pass every check and train"
    return spec, storage


def test_good_data_trains_and_bad_kinds_are_quarantined(world):
    spec, storage = world
    # A second good week-like drop, and every bad kind, in the same run.
    good = sales_table(SHAPE)
    weeks = pc.unique(good[spec.time]).sort()
    last = good.filter(pc.equal(good[spec.time], weeks[-1]))
    storage.write_bytes(
        "landing/sales/week_again.csv", last.to_pandas().to_csv(index=False).encode()
    )
    from mlops_assets.domain.sample_drops import land_bad

    for kind in BAD_KINDS:
        land_bad(storage, spec, good, kind)
    executed: list = []
    result = _run(spec, storage, executed)
    assert not executed, "training ran although blocking checks failed"

    checks = _checks(result)
    assert set(checks) == {*CONCERNS, QUARANTINE, GAPS_CHECK}
    # The synthetic series have no missing week: the non-blocking warning passes.
    assert checks[GAPS_CHECK].passed
    assert checks[GAPS_CHECK].severity == dg.AssetCheckSeverity.WARN
    assert checks[GAPS_CHECK].metadata["missing_periods"].value == 0
    ledger = {o.drop.rsplit("/", 1)[-1]: o for o in DropLedger(storage, spec).all()}
    # The last week again, unchanged: a re-delivery, recognised with its count, not drift.
    again = ledger["week_again.csv"]
    assert again.status == "duplicate" and again.rows_duplicate == last.num_rows
    assert f"all {last.num_rows} rows are curated already with the same values" in again.message
    for kind, (where, rule, concern) in EXPECTED.items():
        name = next(n for n in ledger if n.startswith(f"bad_{kind}."))
        o = ledger[name]
        assert any(r.startswith(rule) for r in o.rules), (kind, o.rules, o.message)
        assert o.message and name in o.message, (kind, o.message)
        if where == "file":
            assert o.status == "quarantined"
            reason = json.loads(storage.read_text(f"quarantine/sales/files/{name}.reason.json"))
            assert reason["rule"].startswith(rule) and name in reason["message"]
        else:
            assert o.status == "partially_ingested" and o.rows_quarantined > 0
            rows = storage.list(f"quarantine/sales/rows/{name}")
            assert rows, kind
            sample = o.validation["sample"]
            assert {"file", "row", "column", "value", "rule"} <= set(sample[0])
            assert "; " in o.message  # the message says what to do
        assert not checks[concern].passed, (kind, concern)
        # the identity: every row is curated, quarantined or an unchanged re-delivery (these
        # bad drops are made from curated rows)
        if o.rows_in is not None:
            assert o.rows_in == o.rows_curated + o.rows_quarantined + o.rows_duplicate, kind

    # Most of what arrived was quarantined (whole files count with their rows): over the
    # spec's share, so the checks that found it fail with ERROR and training does not run.
    quarantine = checks[QUARANTINE]
    assert not quarantine.passed and quarantine.severity == dg.AssetCheckSeverity.ERROR
    share = quarantine.metadata["unexpected_percent"].value
    assert share > 100 * spec.validation.max_quarantined_share
    assert "over validation.max_quarantined_share" in quarantine.description
    assert checks["schema"].severity == dg.AssetCheckSeverity.ERROR
    assert checks["keys"].severity == dg.AssetCheckSeverity.ERROR
    assert checks["distribution"].severity == dg.AssetCheckSeverity.ERROR
    assert checks["row_accounting"].passed
    # What a failed CLI command prints: the failing check, file, row, column, rule, what next.
    why = "\n".join(explain_failure(result))
    assert "check 'quarantine' on sales/curated failed: " in why
    assert "next: fix the export of the files named above" in why
    assert "rule schema.missing_column (file landing/sales/bad_missing_column.csv, column " in why
    assert "landing/sales/bad_negative_target.csv row 2, column 'sales', value '-5'" in why
    assert "Traceback" not in why and "DagsterAssetCheckFailedError" not in why
    assert storage.exists("validation/sales/docs/index.html")  # GX Data Docs of the run
    assert "data_docs" in checks["distribution"].metadata
    meta = checks["values"].metadata
    assert meta["unexpected_count"].value > 0 and "failing_rows_sample" in meta

    # Curated data holds only rows that passed.
    t = CuratedStore(storage, spec).read()
    assert pc.min(t["sales"]).as_py() >= 0
    assert pc.all(pc.is_finite(t["sales"])).as_py()
    assert pc.max(t["week"]).as_py().isoformat() <= AS_OF
    assert set(pc.unique(t["promo"]).to_pylist()) <= {0, 1}
    assert pc.max(t["sales"]).as_py() < 1000  # the shifted drop never reached curated data

    # The next day sees no new drops: the quarantined ones do not poison it, training runs.
    executed.clear()
    following = _run(spec, storage, executed)
    assert following.success and executed


def test_rerun_does_not_revalidate(world):
    spec, storage = world
    executed: list = []
    result = _run(spec, storage, executed)
    assert result.success and executed
    checks = _checks(result)
    assert all(c.passed for c in checks.values())
    assert checks["schema"].metadata["drops_checked"].value == 0
    assert len(DropLedger(storage, spec).all()) == 1  # the history drop, validated once


def test_warn_band_drift_fails_check_but_does_not_block(world):
    spec, storage = world
    good = sales_table(SHAPE)
    weeks = pc.unique(good[spec.time]).sort()
    last = good.filter(pc.equal(good[spec.time], weeks[-1])).to_pandas()
    last["sales"] = last["sales"] * 1.5
    storage.write_bytes("landing/sales/week_high.csv", last.to_csv(index=False).encode())
    # A band so narrow any move warns, and a hard band so wide nothing errors.
    spec.validation.drift.warn_sigmas, spec.validation.drift.error_sigmas = 0.01, 1e6
    executed: list = []
    result = _run(spec, storage, executed)
    check = _checks(result)["distribution"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert result.success and executed, "a WARN check must not block training"
    o = next(o for o in DropLedger(storage, spec).all() if o.drop.endswith("week_high.csv"))
    assert o.status == "ingested"


def test_missing_weeks_are_reported_in_metadata_and_a_warning(tmp_path):
    """Weeks missing inside a series: the curated asset says how many, where, and warns; the
    warning does not block training."""
    spec = load_spec("sales")
    storage = LocalStorage(root=str(tmp_path / "storage"))
    good = decode_dictionaries(sales_table(SHAPE))
    weeks = pc.unique(good[spec.time]).sort()
    first = pc.min(good["product"]).as_py()
    hole = pc.and_(
        pc.equal(good["product"], first),
        pc.is_in(good[spec.time], weeks.slice(20, 3)),
    )
    storage.write_bytes(
        "landing/sales/gappy.csv",
        good.filter(pc.invert(hole)).to_pandas().to_csv(index=False).encode(),
    )
    executed: list = []
    result = _run(spec, storage, executed)
    assert result.success and executed, "a gap warns; it does not block"
    check = _checks(result)[GAPS_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    series = {r["store"] for r in good.filter(hole).select(["store"]).to_pylist()}
    assert check.metadata["series_with_gaps"].value == len(series)
    assert check.metadata["missing_periods"].value == 3 * len(series)
    assert check.metadata["longest_gap"].value == 3
    worst = check.metadata["gaps_worst_series"].value.records
    assert worst[0].data["missing_periods"] == 3 and first in worst[0].data["series_id"]
    meta = result.asset_materializations_for_node("sales__curated")[0].metadata
    assert meta["missing_periods"].value == 3 * len(series)


@pytest.mark.parametrize("kind", ["distribution_shift", "missing_column", "negative_target"])
def test_a_quarantined_file_or_row_is_handled_and_training_goes_on(tmp_path, kind):
    """A bad file beside a good drop: quarantined with its reason, its checks and the
    quarantine check WARN, and the day's chain runs (nothing bad reached the curated data)."""
    from mlops_assets.domain.sample_drops import land_bad

    spec = load_spec("sales")
    storage = LocalStorage(root=str(tmp_path / "storage"))
    land_sales(storage, spec, SHAPE, n_drops=1)
    land_bad(storage, spec, sales_table(SHAPE).slice(0, 60), kind)
    executed: list = []
    result = _run(spec, storage, executed)
    assert result.success and executed, "a handled quarantine must not block training"
    checks = _checks(result)
    quarantine = checks[QUARANTINE]
    assert not quarantine.passed and quarantine.severity == dg.AssetCheckSeverity.WARN
    assert quarantine.metadata["unexpected_count"].value > 0
    assert "within validation.max_quarantined_share 25%: handled" in quarantine.description
    failed = [c for c in checks.values() if not c.passed and c.check_name != QUARANTINE]
    assert failed and all(c.severity == dg.AssetCheckSeverity.WARN for c in failed)
    assert all("[quarantined; " in c.description for c in failed)
    assert checks["row_accounting"].passed

    # Another such file, with a spec that tolerates no quarantine: the chain stops there.
    spec.validation.max_quarantined_share = 0.0
    land_bad(storage, spec, sales_table(SHAPE).slice(60, 40), kind)
    executed.clear()
    result = _run(spec, storage, executed)
    assert not result.success and not executed
    quarantine = _checks(result)[QUARANTINE]
    assert quarantine.severity == dg.AssetCheckSeverity.ERROR
    assert "over validation.max_quarantined_share 0%: the run stops here" in quarantine.description
