"""The daily summary of what the endpoint's data collection sampled."""

from datetime import UTC, datetime

import dagster as dg
import pytest
from as_of import as_of_instance

from mlops_assets.assets.monitoring import build_inference_summary_asset
from mlops_assets.domain.curation import ingest, pending_drops
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.collector import Collector
from mlops_assets.serving.service import collected_columns
from mlops_assets.storage import LocalStorage

pytestmark = pytest.mark.integration
SALES = load_spec("sales")


def test_summary_counts_requests_errors_and_flags_drifted_inputs(tmp_path):
    storage = LocalStorage(root=str(tmp_path / "dev"))
    prod = LocalStorage(root=str(tmp_path / "prod"))
    land_sales(storage, SALES, SalesShape(20, 80), n_drops=1)
    ingest(storage, SALES, pending_drops(storage, SALES))

    collector = Collector(prod.root, "sales", 1.0, columns=collected_columns(SALES), seed=0)
    for i in range(30):
        # Prices ten times what the models were trained on: a drift to flag.
        records = [
            {
                "store": "S0000",
                "product": f"P{j:03d}",
                "week": "2026-11-23",
                "price": 100.0 + j,
                "promo": 0,
            }
            for j in range(5)
        ]
        results = [
            {
                "series_id": f"store=S0000/product=P{j:03d}",
                "prediction": 10.0 + j,
                "model_version": "v1",
                "error": None if j else "unknown_series",
            }
            for j in range(5)
        ]
        collector.offer(records, results, "7", f"req-{i}")
    collector.close()
    day = datetime.now(UTC).strftime("%Y-%m-%d")

    result = dg.materialize(
        [build_inference_summary_asset(SALES)],
        resources={"storage": storage, "prod_storage": prod},
        partition_key=day,
        instance=as_of_instance(SALES, day),
    )
    assert result.success
    md = {
        k: v.value
        for k, v in result.asset_materializations_for_node("sales__inference_summary")[
            0
        ].metadata.items()
    }
    assert md["records"] == 150 and md["requests"] == 30
    assert md["errors"] == {"unknown_series": 30} and md["error_rate"] == 0.2
    assert md["features_drifting"] == ["price"]
    assert md["price_distribution"].startswith("![")
