"""Forecast-only families: baselines and statsforecast models fitted, re-filtered and stored."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from mlops_assets.ml import baselines, families, persistence
from mlops_assets.ml.param_models import ParamModel, fit_many, forecast_many
from mlops_assets.ml.spec import DatasetSpec, load_spec
from tests.fixtures.frames import series_frame

SALES = load_spec("sales")  # weekly: season 52, longer than ETS's and ARIMA's MAX_SEASON
MONTHLY = DatasetSpec.model_validate({**SALES.model_dump(), "frequency": "MS"})  # season 12
BASELINES = families.names("baseline")
STATISTICAL = families.names("statistical")
H = 4


def _seasonal(n: int, seed: int, period: int = 12) -> list[float]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return list(40 + 0.1 * t + 8 * np.sin(2 * np.pi * t / period) + rng.normal(0, 1, n))


def _intermittent(n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(rng.poisson(0.4, n).astype(float))


FRAME = series_frame([_seasonal(72, 1), _seasonal(60, 2), _intermittent(60, 3)])


def test_the_table_names_every_baseline_method():
    assert set(BASELINES) == set(baselines.METHODS)
    assert set(STATISTICAL) == {"ets", "theta", "arima"}


@pytest.mark.parametrize("family", BASELINES)
def test_baselines_forecast_what_their_functions_forecast(family):
    models = fit_many(FRAME, family, SALES)
    assert all(m is not None and m.family == family for m in models)
    expected = baselines.method_forecaster(family, 52, SALES.mean_window)(FRAME, H)
    np.testing.assert_array_equal(forecast_many(models, FRAME, H, SALES), expected)


def test_baselines_of_several_families_forecast_in_one_call():
    mixed = [fit_many(FRAME, f, SALES)[i] for i, f in enumerate(["naive", "mean", "tsb"])]
    out = forecast_many(mixed, FRAME, H, SALES)
    np.testing.assert_array_equal(out[0], baselines.naive(FRAME, H)[0])
    np.testing.assert_array_equal(out[1], baselines.window_mean(FRAME, H, 13)[1])
    np.testing.assert_array_equal(out[2], baselines.tsb(FRAME, H)[2])


@pytest.mark.parametrize("family", STATISTICAL)
def test_statistical_families_fit_and_forecast_as_statsforecast_does(family):
    from statsforecast.arima import auto_arima_f, forecast_arima
    from statsforecast.ets import ets_f, forecast_ets
    from statsforecast.theta import auto_theta, forecast_theta

    models = fit_many(FRAME, family, MONTHLY)
    assert all(m is not None for m in models)
    out = forecast_many(models, FRAME, H, MONTHLY)
    assert out.shape == (3, H) and np.isfinite(out).all()
    # Re-filtering the stored parameters through the fitting series gives the library's own
    # forecast of the model it fitted. (statsforecast.models is not imported: its docstrings
    # raise SyntaxWarning, an error in this suite, when compiled.)
    y = FRAME.target[: FRAME.offsets[1]]
    library = {
        "ets": lambda: forecast_ets(ets_f(y, 12), H),
        "theta": lambda: forecast_theta(auto_theta(y, 12), H),
        "arima": lambda: forecast_arima(auto_arima_f(y, period=12), h=H),
    }[family]()
    np.testing.assert_allclose(out[0], library["mean"], rtol=1e-6)


def test_arima_with_drift_extends_the_drift_over_a_longer_history():
    from statsforecast.arima import auto_arima_f, forecast_arima

    y = np.cumsum(np.random.default_rng(3).normal(0.5, 1, 80)) + 10
    short, longer = series_frame([list(y[:60])]), series_frame([list(y)])
    (model,) = fit_many(short, "arima", SALES)
    assert "drift" in str(model.params["coef_names"])
    from_short = forecast_many([model], short, H, SALES)[0]
    np.testing.assert_allclose(from_short, forecast_arima(auto_arima_f(y[:60]), h=H)["mean"])
    from_longer = forecast_many([model], longer, H, SALES)[0]
    assert from_longer[0] > from_short[-1]  # 20 more periods of drift


def test_ets_re_filters_later_actuals_without_refitting():
    short = series_frame([_seasonal(60, 1)])
    longer = series_frame([_seasonal(72, 1)])  # the same 60 periods and 12 that arrived later
    (model,) = fit_many(short, "ets", MONTHLY)
    from_short = forecast_many([model], short, H, MONTHLY)
    from_longer = forecast_many([model], longer, H, MONTHLY)
    assert np.isfinite(from_longer).all()
    assert not np.allclose(from_short, from_longer)
    assert fit_many(short, "ets", MONTHLY) == [model]  # fitting again is deterministic


def test_missing_periods_are_interpolated_inside_and_forecast_over_at_the_end():
    values = _seasonal(60, 4)
    values[20] = np.nan
    gappy = series_frame([[np.nan, *values, np.nan, np.nan]])
    (model,) = fit_many(gappy, "ets", MONTHLY)
    assert model is not None
    out = forecast_many([model], gappy, H, MONTHLY)
    trimmed = series_frame([values])
    # The two unobserved last periods are forecast over: steps 3.. of the trimmed forecast.
    np.testing.assert_allclose(out[0], forecast_many([model], trimmed, H + 2, MONTHLY)[0, 2:])


@pytest.mark.parametrize("family", BASELINES + STATISTICAL)
def test_a_model_round_trips_through_persistence_exactly(family):
    models = fit_many(FRAME, family, MONTHLY)
    blobs = [persistence.dumps(m) for m in models]
    loaded = [persistence.load_verified(b, persistence.sha256(b)) for b in blobs]
    assert all(isinstance(m, ParamModel) for m in loaded)
    header, _ = persistence.read_header(blobs[0])
    assert header["format"] == persistence.PARAMS and header["family"] == family
    assert header["numpy"] == np.__version__ and header["statsforecast"]
    assert loaded == models
    np.testing.assert_allclose(
        forecast_many(loaded, FRAME, H, MONTHLY),  # type: ignore[arg-type]
        forecast_many(models, FRAME, H, MONTHLY),
        rtol=1e-9,
    )


def _artifact(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return persistence.MAGIC + struct.pack("<I", len(head)) + head + payload


def test_an_object_array_or_a_family_outside_the_zoo_is_refused():
    with pytest.raises(persistence.UntrustedModelError, match="dtype object"):
        persistence.dumps(ParamModel("ets", {}, {"par": np.array([1.0, "x"], dtype=object)}))
    buffer = io.BytesIO()
    np.savez(buffer, par=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    header = {"format": "params", "family": "ets", "params": {"m": 1}}
    with pytest.raises(persistence.UntrustedModelError, match="pickle"):
        persistence.loads(_artifact(header, buffer.getvalue()))
    good = persistence.dumps(ParamModel("naive", {}, {}))
    _, payload = persistence.read_header(good)
    for family in ("ridge", "os.system", None):
        with pytest.raises(persistence.UntrustedModelError, match="family"):
            persistence.loads(_artifact({**header, "family": family}, payload))
        with pytest.raises(persistence.UntrustedModelError, match="family"):
            persistence.dumps(ParamModel(str(family), {}, {}))


def test_a_malformed_params_artifact_is_refused():
    header = {"format": "params", "family": "ets", "params": {"m": 1}}
    npy = io.BytesIO()
    np.save(npy, np.arange(3.0))
    with pytest.raises(persistence.ModelLoadError, match="not an npz archive"):
        persistence.loads(_artifact(header, npy.getvalue()))
    with pytest.raises(persistence.ModelLoadError, match="unreadable params payload"):
        persistence.loads(_artifact(header, b""))
    with pytest.raises(persistence.ModelLoadError, match="JSON scalars"):
        persistence.loads(_artifact({**header, "params": {"m": [1, 2]}}, b""))
    with pytest.raises(persistence.ModelLoadError, match="JSON scalars"):
        persistence.dumps(ParamModel("ets", {"m": [1]}, {}))  # type: ignore[dict-item]


def test_a_tampered_payload_is_refused():
    (model, *_) = fit_many(FRAME, "ets", MONTHLY)
    data = persistence.dumps(model)
    tampered = data[:-40] + bytes([data[-40] ^ 1]) + data[-39:]
    with pytest.raises(persistence.ModelIntegrityError):
        persistence.load_verified(tampered, persistence.sha256(data))


def test_a_pipeline_is_asked_of_a_param_model_only_by_mistake():
    with pytest.raises(persistence.ModelLoadError, match="not a Pipeline"):
        persistence.as_pipeline(ParamModel("naive", {}, {}))


def test_one_observation_is_enough_for_naive_and_mean_not_for_statistical_families():
    frame = series_frame([[np.nan, 5.0, np.nan], [np.nan, np.nan]])
    for family in BASELINES + STATISTICAL:
        models = fit_many(frame, family, SALES)
        assert models[1] is None, family  # no observation: no model from any family
        served = family not in STATISTICAL and family != "seasonal_naive"
        assert (models[0] is not None) == served, family
        if served:
            out = forecast_many(models, frame, H, SALES)
            assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_a_regression_family_is_not_fitted_here():
    with pytest.raises(ValueError, match="regression family"):
        fit_many(FRAME, "ridge", SALES)
    with pytest.raises(ValueError, match="2 models for 3 series"):
        forecast_many([None, None], FRAME, H, SALES)
