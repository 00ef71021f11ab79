"""The deployment asset says what it released and where (issue 16)."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.assets.deployment import build_deployment_assets, deployment_key
from mlops_assets.domain.model_sets import ModelSetRef, pointer_name, read_pointer
from mlops_assets.ml import persistence
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.synthetic import real_model_set
from mlops_assets.storage import LocalStorage
from resources.endpoints import LocalEndpoint
from resources.registry import MlflowRegistry

pytestmark = pytest.mark.integration

SPEC = load_spec("sales")
FOLDER = "models/sales/releases/2026-11-30/abcd1234"


def test_local_release_names_the_version_alias_and_the_server_that_follows_it(tmp_path):
    root = tmp_path / "prod"
    real_model_set(root, FOLDER, SPEC, n_series=3, version="2026-11-30/abcd1234")
    storage = LocalStorage(root=str(root))
    uri = f"sqlite:///{tmp_path / 'prod.db'}"
    registry = MlflowRegistry(tracking_uri=uri, registry_uri=uri, alias="production")
    sha = persistence.sha256((root / FOLDER / "manifest.parquet").read_bytes())
    tags = {"folder": FOLDER, "manifest_sha256": sha, "candidate_version": "2026-11-30/abcd1234"}
    mv = registry.register_model_set("sales-models", storage.uri(FOLDER), tags)
    registry.set_alias("sales-models", "production", mv.version)

    deployment = next(a for a in build_deployment_assets(SPEC) if deployment_key(SPEC) in a.keys)
    result = dg.materialize(
        [deployment],
        resources={
            "prod_storage": storage,
            "prod_registry": registry,
            "endpoint": LocalEndpoint(root=str(root)),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    md = {
        k: getattr(v, "value", v)
        for k, v in result.asset_materializations_for_node(
            deployment_key(SPEC).to_python_identifier()
        )[0].metadata.items()
    }
    assert md["released"] == f"sales-models v{mv.version} (model set 2026-11-30/abcd1234)"
    assert md["model_set_version"] == "2026-11-30/abcd1234"
    assert md["registry_version"] == mv.version
    assert md["alias"] == "production"
    assert md["target"] == "local"
    pointer = root / pointer_name("sales", "production")
    assert md["pointer"] == str(pointer)
    assert "not watched" not in md["endpoint"] and "follows alias 'production'" in md["endpoint"]
    assert "the local server follows alias 'production'" in md["served_by"]
    assert f"mlops serve --dataset sales --alias production --root {root}" in md["served_by"]
    assert "url" not in md  # no server was named: the pointer is the release
    ref = read_pointer(storage, pointer_name("sales", "production"))
    assert isinstance(ref, ModelSetRef) and ref.registry_version == mv.version
