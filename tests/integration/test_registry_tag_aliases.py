"""Aliases kept in registered-model tags (the mode ``azureml://`` registries get), on a real
local MLflow store: the registry's promotion and rollback scenario passes unchanged, no native
alias is ever set, serving resolves the alias the same way, and a failed alias move is undone.
"""

from __future__ import annotations

import pytest

from mlops_assets.domain.registry_aliases import alias_tag, uses_tags
from mlops_assets.serving.source import RegistrySource, SourceError
from resources.registry import MlflowRegistry
from tests.integration.test_registry import NAME, Env, clean, register_first_version
from tests.integration.test_registry import (
    test_promotion_to_prod_and_rollback as promotion_and_rollback,
)

pytestmark = pytest.mark.integration


class TagEnv(Env):
    def __init__(self, home):
        super().__init__(home)
        for name in ("registry", "prod_registry"):
            old = getattr(self, name)
            # A new resource, not model_copy: Dagster rebuilds resources from their config.
            setattr(self, name, MlflowRegistry(**{**old.model_dump(), "alias_mode": "tags"}))


@pytest.fixture(scope="module")
def tag_env(tmp_path_factory) -> TagEnv:
    """Two dev versions, promoted and rolled back by the registry's own scenario, in tag mode
    (built once: the tests below only read it, or leave it as they found it)."""
    env = TagEnv(tmp_path_factory.mktemp("tag-aliases"))
    register_first_version(env)
    env.curate(clean())
    assert env.run().success
    promotion_and_rollback(env)
    return env


def test_promotion_and_rollback_behave_as_with_native_aliases(tag_env):
    for registry in (tag_env.registry, tag_env.prod_registry):
        model = registry.client().get_registered_model(NAME)
        assert not model.aliases, "a native alias was set in tag mode"
        current = registry.get_alias(NAME)
        assert model.tags[alias_tag(registry.alias)] == str(current.version)
        listed = {v.version: v.aliases for v in registry.list_versions(NAME)}
        assert listed[current.version] == (registry.alias,)
        assert all(not a for v, a in listed.items() if v != current.version)


def test_serving_resolves_a_tag_alias(tag_env):
    prod = tag_env.prod_registry
    uri = prod.tracking_uri
    served = RegistrySource(uri, NAME, "production", tag_env.prod_storage, "tags").resolve()
    assert served.label == str(prod.get_alias(NAME).version)
    # The mode matters: the same store read for native aliases has none.
    with pytest.raises(SourceError, match="production"):
        RegistrySource(uri, NAME, "production", tag_env.prod_storage, "native").resolve()


def test_a_failed_alias_move_leaves_the_alias_and_no_version(tag_env, monkeypatch):
    registry = tag_env.registry
    before = registry.get_alias(NAME).version
    versions = [v.version for v in registry.list_versions(NAME)]
    client = registry.client()
    real = client.set_registered_model_tag

    def boom(name, key, value):
        if key == alias_tag("champion"):
            raise RuntimeError("tag service down")
        return real(name, key, value)

    monkeypatch.setattr(client, "set_registered_model_tag", boom)
    with pytest.raises(Exception, match="nothing left registered"):
        registry.register_model_set(NAME, "file:///x", {"folder": "x"}, None, "champion")
    monkeypatch.undo()
    assert registry.get_alias(NAME).version == before
    assert [v.version for v in registry.list_versions(NAME)] == versions


def test_the_mode_follows_the_registry_uri():
    aml = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"
    assert uses_tags(aml) and not uses_tags("sqlite:///x.db")
    assert not uses_tags(aml, "native") and uses_tags("sqlite:///x.db", "tags")
    with pytest.raises(ValueError, match="auto, native or tags"):
        uses_tags(aml, "stages")
    assert MlflowRegistry(tracking_uri=aml).alias_mode == "auto"


def test_an_azure_ml_registry_uri_is_refused_with_what_to_set():
    """Dev -> prod is two workspaces with a verified copy; the other design (an AML registry)
    cannot be configured by accident."""
    from resources.registry import RegistryError

    uri = (
        "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/"
        "providers/Microsoft.MachineLearningServices/registries/shared-models"
    )
    with pytest.raises(RegistryError, match="MLOPS_MLFLOW_PROD_URI"):
        MlflowRegistry(tracking_uri=uri, alias="production").client()
