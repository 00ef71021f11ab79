import numpy as np
import pytest

from mlops_assets.ml.drift import feature_drift, psi

RNG = np.random.default_rng(0)
REF = RNG.normal(10, 2, 20_000)


@pytest.mark.parametrize(
    "current,low,high",
    [
        (RNG.normal(10, 2, 5_000), 0.0, 0.02),  # same distribution: stable
        (RNG.normal(11, 2, 5_000), 0.1, 0.4),  # half a sigma: moderate
        (RNG.normal(16, 2, 5_000), 1.0, np.inf),  # three sigmas: large
    ],
)
def test_psi_grows_with_the_shift(current, low, high):
    assert low <= psi(REF, current) <= high


def test_feature_drift_reports_each_feature_with_a_verdict():
    out = feature_drift(
        {"price": REF, "promo": (RNG.random(20_000) < 0.1).astype(float)},
        {"price": RNG.normal(16, 2, 1_000), "promo": (RNG.random(1_000) < 0.1).astype(float)},
    )
    by = {d["feature"]: d for d in out}
    assert by["price"]["verdict"] == "large" and by["price"]["smd"] == pytest.approx(3, abs=0.2)
    assert by["promo"]["verdict"] == "stable"


def test_no_current_values_is_no_data_not_a_crash():
    out = feature_drift({"price": REF}, {"price": np.array([np.nan])})
    assert out[0]["verdict"] == "no data"
