"""One writer per dataset (issue 18, item 2): which ops hold a dataset's pool, and the
instance configs that make the pool hold for whole runs. The launches themselves are tested
on real instances in tests/integration/test_one_writer_per_dataset.py (local) and
tests/integration/test_postgres_instance.py (the deploy config on PostgreSQL)."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.definitions import build_definitions
from mlops_assets.ml.spec import bundled_specs, load_spec
from mlops_assets.pools import ensure_writer_pools, writer_pool
from mlops_assets.profiles import ensure_dagster_home, resources_for

DEPLOY_CONFIG = Path(__file__).parents[2] / "deploy" / "dagster" / "dagster.yaml"

WRITERS = {
    "curated",
    "candidate_models",
    "evaluation",
    "registered_model_set",
    "production_model_set",
}


def test_every_writer_of_a_dataset_holds_its_pool_and_readers_hold_none(tmp_path):
    spec = load_spec("sales")
    defs = build_definitions([spec], resources_for("local", tmp_path))
    pools = {
        key.path[-1]: defs.resolve_assets_def(key).op.pool
        for key in defs.resolve_asset_graph().get_all_asset_keys()
    }
    assert {name for name, pool in pools.items() if pool} == WRITERS
    assert {pools[name] for name in WRITERS} == {writer_pool("sales")}
    for job in ("sales_promote_to_prod", "sales_rollback"):
        ops = defs.resolve_job_def(job).all_node_defs
        assert [op.pool for op in ops] == [writer_pool("sales")]


def test_the_local_instance_queues_runs_per_pool_with_every_pool_created(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(tmp_path)
    ensure_dagster_home(tmp_path)  # a second call keeps the file and the limits
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        pools = instance.get_concurrency_config().pool_config
        assert pools.pool_granularity.value == "run" and pools.default_pool_limit == 1
        storage = instance.event_log_storage
        for spec in bundled_specs():
            assert storage.get_concurrency_info(writer_pool(spec.name)).slot_count == 1
        assert ensure_writer_pools(instance, [s.name for s in bundled_specs()]) == []
    assert (home / "dagster.yaml").read_text().count("concurrency:") == 1


def test_an_instance_that_would_not_hold_pools_for_whole_runs_is_refused(tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with pytest.raises(ValueError, match="granularity: run"):
            ensure_writer_pools(instance, ["sales"])


def test_the_deployed_instance_holds_the_same_pools_and_no_tag_limits():
    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "config" not in config["run_coordinator"]  # limits live under concurrency:
    assert config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 2
