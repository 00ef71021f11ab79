"""Evaluation, registration (MLflow, SQLite), promotion dev -> prod, rollback, safe loading."""

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from as_of import as_of_instance

from mlops_assets.assets.evaluation import build_evaluation_asset
from mlops_assets.assets.promotion import build_production_asset
from mlops_assets.assets.registration import (
    PromotionError,
    build_promotion_jobs,
    build_registration_asset,
    promote_version,
    rollback_alias,
)
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.model_sets import (
    load_model,
    read_manifest,
    read_release,
    registered_model_name,
    release_pointer,
)
from mlops_assets.ml import modelset, persistence
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import series_ids as row_series
from mlops_assets.storage import LocalStorage
from resources.registry import MlflowRegistry, RegistryUnavailableError
from resources.training_engine import LocalTrainingEngine

pytestmark = pytest.mark.integration

SALES = load_spec("sales")
AS_OF = "2026-11-17"
SHAPE = SalesShape(4, 110, seed=3)
NAME = registered_model_name(SALES)


class Env:
    def __init__(self, home):
        self.storage = LocalStorage(root=str(home / "storage"))
        self.prod_storage = LocalStorage(root=str(home / "prod-storage"))
        self.registry = MlflowRegistry(
            tracking_uri=f"sqlite:///{home}/mlflow/dev.db",
            artifact_root=(home / "storage" / "mlflow-artifacts").as_uri(),
        )
        self.prod_registry = MlflowRegistry(
            tracking_uri=f"sqlite:///{home}/mlflow/prod.db", alias="production"
        )
        self.instance = dg.DagsterInstance.ephemeral()

    def resources(self):
        return {
            "storage": self.storage,
            "prod_storage": self.prod_storage,
            "training": LocalTrainingEngine(max_workers=1),
            "registry": self.registry,
            "prod_registry": self.prod_registry,
        }

    def curate(self, table):
        CuratedStore(self.storage, SALES).merge(table)

    def run(self, evaluation=None, as_of=AS_OF, raise_on_error=True, spec=SALES):
        config = {"ops": {"sales__evaluation": {"config": evaluation}}} if evaluation else None
        return dg.materialize(
            [
                build_training_asset(spec),
                build_evaluation_asset(spec),
                build_registration_asset(spec),
            ],
            resources=self.resources(),
            partition_key=as_of,
            instance=as_of_instance(spec, as_of, instance=self.instance),
            run_config=config,
            raise_on_error=raise_on_error,
        )

    def decisions(self, as_of=AS_OF):
        release = read_release(self.storage, release_pointer(SALES, as_of))
        table = read_manifest(self.storage, release.ref)
        return {r["series_id"]: r for r in table.to_pylist()}, release


def promotion_definitions(spec) -> dg.Definitions:
    """The production asset with its promote job and the rollback job."""
    return dg.Definitions(assets=[build_production_asset(spec)], jobs=build_promotion_jobs(spec))


def clean() -> pa.Table:
    return sales_table(SHAPE)


def series_ids(table):
    return sorted(set(row_series(table, SALES).to_pylist()))


def corrupt(table: pa.Table, series_id: str, seed: int = 0) -> pa.Table:
    """Heavy noise in one series' training window (not its holdout): a poor model."""
    ids = row_series(table, SALES).to_pylist()
    weeks = sorted(set(table["week"].to_pylist()))
    cutoff = weeks[-SALES.holdout - 1]
    rng = np.random.default_rng(seed)
    sales = np.asarray(table["sales"].to_numpy(zero_copy_only=False), dtype=float).copy()
    wk = table["week"].to_pylist()
    for i, (sid, w) in enumerate(zip(ids, wk, strict=True)):
        if sid == series_id and w < cutoff:
            sales[i] = abs(sales[i] * rng.uniform(0.1, 3.0) + rng.normal(0, 50))
    return table.set_column(table.column_names.index("sales"), "sales", pa.array(sales))


def registration_fails(env, as_of, message, **resources):
    """The registration asset alone fails with ``message``; the good registry is untouched."""
    before = [v.version for v in env.registry.list_versions(NAME)]
    res = dg.materialize(
        [build_registration_asset(SALES)],
        resources={**env.resources(), **resources},
        partition_key=as_of,
        instance=as_of_instance(SALES, as_of, instance=env.instance),
        raise_on_error=False,
    )
    assert not res.success
    errors = [e for e in res.all_events if e.is_step_failure]
    assert message in errors[0].event_specific_data.error.message
    assert [v.version for v in env.registry.list_versions(NAME)] == before


# Every test builds the registry state it needs in its own home: they pass in any order.
@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def register_first_version(env: Env) -> dg.ExecuteInProcessResult:
    """v1: every series registered; the first series trained on a corrupted history."""
    table = clean()
    env.curate(corrupt(table, series_ids(table)[0]))
    result = env.run()
    assert result.success
    return result


@pytest.fixture
def champion_env(env):
    """A dev registry whose champion (v1) was trained on the clean history of every series."""
    env.curate(clean())
    assert env.run().success
    return env


@pytest.fixture
def two_versions_env(env):
    """v1 as in the first run, then v2 where the repaired series won."""
    register_first_version(env)
    env.curate(clean())
    assert env.run().success
    return env


def test_first_run_registers_every_series_as_one_version(env):
    result = register_first_version(env)
    rows, release = env.decisions()
    assert {r["decision"] for r in rows.values()} == {"no_champion"}
    assert all(r["promoted"] and r["artifact"] for r in rows.values())
    champion = env.registry.get_alias(NAME)
    assert champion.version == 1 and env.registry.list_versions(NAME)[-1].version == 1
    assert champion.tags["manifest_sha256"] == release.ref.manifest_sha256
    assert champion.tags["count_series"] == str(len(rows)) and champion.tags["as_of"] == AS_OF
    assert champion.source.startswith("file://") and champion.source.endswith(release.ref.folder)
    # One MLflow run in experiment "sales" with the manifest as artifact.
    client = env.registry.client()
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and run.data.params["as_of"] == AS_OF
    assert "n_series" in run.data.metrics
    arts = [a.path for a in client.list_artifacts(champion.run_id, "model_set")]
    assert "model_set/manifest.parquet" in arts
    # The asset check ran and passed.
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    # First models are counted apart from promotions without a comparison (none).
    assert champion.tags["promoted_without_comparison"] == "0"
    assert champion.tags["gate_promoted_first"] == str(len(rows))
    assert checks[0].metadata["series_compared"].value == 0
    meta = result.asset_materializations_for_node("sales__evaluation")[0].metadata
    assert meta["promoted_without_comparison"].value == 0
    assert meta["promoted_first"].value == len(rows)


def test_better_data_promotes_only_the_improved_series(env):
    register_first_version(env)
    table = clean()
    target = series_ids(table)[0]
    env.curate(table)  # the corrupted series gets its clean history back
    assert env.run().success
    rows, _ = env.decisions()
    assert rows[target]["decision"] == "better" and rows[target]["promoted"]
    others = [r for s, r in rows.items() if s != target]
    assert others and all(r["decision"] == "not_better" and not r["promoted"] for r in others)
    # Carried by reference: the champion's pack and lineage, not a copy.
    v1 = read_manifest(env.storage, env.registry.get_version(NAME, 1).ref)
    v1_rows = {r["series_id"]: r for r in v1.to_pylist()}
    for s, r in rows.items():
        if s != target:
            assert (r["artifact"], r["offset"], r["model_sha256"]) == (
                v1_rows[s]["artifact"],
                v1_rows[s]["offset"],
                v1_rows[s]["model_sha256"],
            )
    assert rows[target]["artifact"] != v1_rows[target]["artifact"]
    assert env.registry.get_alias(NAME).version == 2
    # Every challenger was compared with its champion on the same rows.
    assert all(r["compared"] and r["champion_n"] == r["n_evaluated"] for r in rows.values())
    tags = env.registry.get_alias(NAME).tags
    assert tags["gate_compared"] == str(len(rows)) and tags["promoted_without_comparison"] == "0"


@pytest.mark.parametrize(
    ("baseline", "decision", "reason"),
    [
        # Margin rules alone: rejected by the champion comparison.
        ("none", "not_better", "vs champion"),
        # The default: this challenger does not even beat seasonal naive, which rejects it first.
        ("seasonal_naive", "below_baseline", "does not beat the seasonal_naive baseline"),
    ],
)
def test_worse_challenger_is_rejected_with_its_reason(champion_env, baseline, decision, reason):
    env = champion_env
    table = clean()
    victim = series_ids(table)[1]
    env.curate(corrupt(table, victim, seed=7))
    assert env.run(evaluation={"require_beats_baseline": baseline}).success
    rows, _ = env.decisions()
    assert rows[victim]["decision"] == decision and not rows[victim]["promoted"]
    assert reason in rows[victim]["decision_reason"]
    assert rows[victim]["challenger_metric"] > rows[victim]["champion_metric"]
    assert rows[victim]["compared"]  # re-scored on the same rows either way


def test_business_threshold_blocks_promotion(tmp_path):
    env = Env(tmp_path)
    env.curate(clean())
    assert env.run(evaluation={"max_metric": 0.0001}).success
    rows, _ = env.decisions()
    assert {r["decision"] for r in rows.values()} == {"below_threshold"}
    assert not any(r["promoted"] for r in rows.values())
    assert all(r["artifact"] is None for r in rows.values())  # never served
    assert "business threshold" in next(iter(rows.values()))["decision_reason"]


def test_promotion_to_prod_and_rollback(two_versions_env):
    env = two_versions_env
    defs = dg.Definitions.merge(
        promotion_definitions(SALES), dg.Definitions(resources=env.resources())
    )
    jobs = {j.name: defs.resolve_job_def(j.name) for j in build_promotion_jobs(SALES)}
    res = jobs["sales_promote_to_prod"].execute_in_process(instance=env.instance)
    promoted = res.asset_materializations_for_node("sales__production_model_set")[0].metadata
    assert promoted["prod_version"].value == env.prod_registry.get_alias(NAME).version
    assert res.success
    prod = env.prod_registry.get_alias(NAME)
    dev = env.registry.get_alias(NAME)
    assert prod.tags["dev_version"] == str(dev.version)
    assert prod.source.startswith(env.prod_storage.uri("models"))
    # Every model of the prod set loads verified from prod storage.
    manifest = read_manifest(env.prod_storage, prod.ref)
    for sid in manifest["series_id"].to_pylist():
        assert load_model(env.prod_storage, manifest, sid) is not None
    # Promote v1 explicitly, then roll production back to the previous version.
    res = jobs["sales_promote_to_prod"].execute_in_process(
        instance=env.instance,
        run_config={"ops": {"sales__production_model_set": {"config": {"version": 1}}}},
    )
    assert res.success
    assert env.prod_registry.get_alias(NAME).tags["dev_version"] == "1"
    res = jobs["sales_rollback"].execute_in_process(
        instance=env.instance,
        run_config={"ops": {"sales_rollback_alias": {"config": {"version": prod.version}}}},
    )
    assert res.success and env.prod_registry.get_alias(NAME).version == prod.version
    # Default rollback target: the previous version that passed its gate.
    assert rollback_alias(SALES, env.registry, "champion", None) == (dev.version, dev.version - 1)
    with pytest.raises(PromotionError, match="does not exist"):
        rollback_alias(SALES, env.registry, "champion", 99)


def test_tampered_artifact_is_refused(champion_env):
    env = champion_env
    manifest = read_manifest(env.storage, env.registry.get_alias(NAME).ref)
    sid, artifact, offset, length, _sha = next(modelset.iter_locations(manifest))
    assert load_model(env.storage, manifest, sid) is not None
    data = bytearray(env.storage.read_bytes(artifact))
    good = bytes(data)
    data[offset + length - 1] ^= 0xFF
    env.storage.write_bytes(artifact, bytes(data))
    try:
        with pytest.raises(persistence.ModelIntegrityError, match="refusing to load"):
            load_model(env.storage, manifest, sid)
        with pytest.raises(PromotionError, match="sha256"):
            promote_version(
                SALES,
                env.storage,
                env.prod_storage,
                env.registry,
                env.prod_registry,
                env.registry.get_alias(NAME).version,
            )
    finally:
        env.storage.write_bytes(artifact, good)


@pytest.mark.parametrize(
    "uri",
    ["sqlite:////proc/no-such-dir/dev.db", "http://127.0.0.1:9"],
    ids=["bad-sqlite-path", "closed-port"],
)
def test_unreachable_registry_is_a_clear_error_and_leaves_nothing(env, uri):
    bad = MlflowRegistry(tracking_uri=uri, http_max_retries=0, http_timeout_s=2)
    with pytest.raises(RegistryUnavailableError, match="cannot be reached"):
        bad.register_model_set(NAME, "file:///nowhere", {"a": "b"})
    # Through the asset: the run fails with the same message; the good registry is untouched.
    if read_release(env.storage, release_pointer(SALES, AS_OF)) is None:
        env.curate(clean())
        assert env.run().success
    registration_fails(env, AS_OF, "cannot be reached", registry=bad)


def test_half_registration_is_undone(champion_env, monkeypatch):
    """A failure after the version was created (moving the alias) removes the version."""
    env = champion_env
    client = env.registry.client()
    before = [v.version for v in env.registry.list_versions(NAME)]

    def boom(*a, **k):
        raise RuntimeError("alias service down")

    monkeypatch.setattr(client, "set_registered_model_alias", boom)
    with pytest.raises(Exception, match="nothing left registered"):
        env.registry.register_model_set(NAME, "file:///x", {"folder": "x"}, None, "champion")
    assert [v.version for v in env.registry.list_versions(NAME)] == before


def test_quality_gate_fails_the_run_before_registration(champion_env):
    env = champion_env
    table = clean()
    before = env.registry.get_alias(NAME).version
    env.curate(corrupt(corrupt(table, series_ids(table)[2], 1), series_ids(table)[3], 2))
    # A drill that promotes worse challengers: the baseline rule, on by default, is turned off
    # (it would reject these challengers before the aggregate gate saw them).
    drill = {"margin": -100.0, "max_median_increase": 0.0, "require_beats_baseline": "none"}
    result = env.run(evaluation=drill, raise_on_error=False)
    assert not result.success
    checks = result.get_asset_check_evaluations()
    assert checks and not checks[0].passed
    assert env.registry.get_alias(NAME).version == before  # nothing registered


def test_a_release_without_its_gate_outcome_is_not_registered(champion_env):
    """Registration fails closed: a release record that does not say it passed is refused."""
    env = champion_env
    record = json.loads(env.storage.read_text(release_pointer(SALES, AS_OF)))
    del record["passed"]
    day = "2026-11-19"
    env.storage.write_text(release_pointer(SALES, day), json.dumps(record))
    registration_fails(env, day, "gate outcome")


def test_champions_that_cannot_be_scored_stay_and_the_gate_fails(champion_env):
    """The spec gained a lag: no champion can be scored on the new features. Each keeps its
    place (``kept_unscored``), and with champions but no comparison the blocking check fails
    and nothing is registered; ``unscored: promote`` lets the change through, counted."""
    env = champion_env
    wider = SALES.model_copy(deep=True)
    wider.features.lags = [*SALES.features.lags, 3]
    before = env.registry.get_alias(NAME).version
    result = env.run(spec=wider, raise_on_error=False)
    assert not result.success
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and "none was compared" in check.description
    assert check.metadata["series_kept_unscored"].value == SHAPE.n_series
    assert check.metadata["series_compared"].value == 0
    assert check.metadata["series_promoted_without_comparison"].value == 0
    rows, release = env.decisions()
    assert not release.passed
    assert {r["decision"] for r in rows.values()} == {"kept_unscored"}
    assert all(r["trained_in"] != release.ref.version for r in rows.values())  # champions kept
    assert env.registry.get_alias(NAME).version == before
    # The operator accepts the uncompared promotions once: measured, not hidden.
    assert env.run(spec=wider, evaluation={"unscored": "promote"}).success
    tags = env.registry.get_alias(NAME).tags
    assert tags["promoted_without_comparison"] == str(SHAPE.n_series)
    assert tags["gate_compared"] == "0"


def test_repromotion_repairs_a_corrupt_prod_pack(champion_env):
    """What prod already holds is verified: a pack tampered with in prod is replaced from the
    verified dev copy; with dev bad as well, promotion is refused."""
    env = champion_env
    version = env.registry.get_alias(NAME).version

    def promote():
        return promote_version(
            SALES, env.storage, env.prod_storage, env.registry, env.prod_registry, version
        )

    prod, first = promote()
    assert first["packs_copied"] == first["packs"] and first["packs_repaired"] == 0
    manifest = read_manifest(env.prod_storage, prod.ref)
    sid, artifact, offset, length, _sha = next(modelset.iter_locations(manifest))
    data = bytearray(env.prod_storage.read_bytes(artifact))
    data[offset + length - 1] ^= 0xFF
    env.prod_storage.write_bytes(artifact, bytes(data))
    with pytest.raises(persistence.ModelIntegrityError):
        load_model(env.prod_storage, manifest, sid)
    again, second = promote()
    assert again.version == prod.version
    assert load_model(env.prod_storage, manifest, sid) is not None
    assert (second["packs_copied"], second["packs_repaired"]) == (0, 1)
    # Dev corrupt too: refused, naming the series and the pack; prod left as it is.
    env.prod_storage.write_bytes(artifact, bytes(data))
    good = env.storage.read_bytes(artifact)
    env.storage.write_bytes(artifact, bytes(data))
    with pytest.raises(PromotionError, match=f"series {sid}.*does not match"):
        promote()
    env.storage.write_bytes(artifact, good)
