"""``azureml://`` tracking and registry URIs resolve to the azureml-mlflow plugin's stores.

Without the plugin, MLflow refuses such a URI on first use
(``UnsupportedModelRegistryStoreURIException``): the registry on Azure failed at once. Building
the stores needs no network (they authenticate on the first call), so this runs offline.
"""

from __future__ import annotations

import importlib.metadata

import pytest

# An Azure ML workspace's MLflow tracking URI, as `az ml workspace show` reports it.
URI = (
    "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/00000000-0000-0000-0000-000000000000"
    "/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
)


@pytest.mark.parametrize(
    "group", ["mlflow.tracking_store", "mlflow.model_registry_store", "mlflow.artifact_repository"]
)
def test_the_plugin_registers_the_azureml_scheme(group):
    names = {e.name for e in importlib.metadata.entry_points().select(group=group)}
    assert "azureml" in names


def test_an_azureml_uri_reaches_the_plugins_store_classes():
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=URI, registry_uri=URI)
    # MLflow has no public accessor for the store a client resolved its URI to.
    registry = client._get_registry_client().store  # noqa: SLF001
    tracking = client._tracking_client.store  # noqa: SLF001
    assert type(registry).__name__ == "AzureMLflowModelRegistry"
    assert type(registry).__module__.startswith("azureml.mlflow.")
    assert type(tracking).__module__.startswith("azureml.mlflow.")
