"""The model families a dataset spec may name: one table that every other module reads.

A family is one frozen ``Family`` record. From it:

* the spec accepts its name (``ModelSpec.family``);
* fitting builds its Pipeline (``Family.pipeline``: ``[StandardScaler ->] estimator``) or, where
  the family has one and the spec's params allow it, fits it in closed form;
* persistence allow-lists its types: a skops file may name only ``COMMON_SKOPS_TYPES`` and the
  ``skops_types`` of the registered families (reviewed by hand: extend only after reviewing the
  new type; ``skops_types`` of a fitted model lists what a file names);
* a family with a ``linear`` class (a fitted model is exactly ``x @ coef_ + intercept_``, one
  ``coef_`` per feature) is stored as raw float64 arrays and predicted across many series in
  one vectorised pass (``predict.stack_linear``); the header names the class, so artifacts of
  one class load the same whichever family wrote them.

A family's ``kind`` says how it forecasts: ``regression`` families are the scikit-learn
Pipelines above, fitted on lag/calendar/exogenous features; ``baseline`` and ``statistical``
families forecast a series from its own history with no feature matrix (``ml.param_models``:
``baselines`` functions, and statsforecast's AutoETS, AutoTheta and AutoARIMA) and are stored
as parameters; asking one of them for a Pipeline raises ``NotARegressionFamilyError``.

Adding a family for good is one entry in ``_BUILT_IN``. ``register`` adds one to the running
process only (a test, a notebook): processes forked afterwards inherit it, others do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops_assets.ml import fast_ridge

DEFAULT_RANDOM_STATE = 0

# Types any supported skops file may name: containers, numpy arrays and the pipeline itself.
COMMON_SKOPS_TYPES = frozenset(
    {
        "builtins.bool",
        "builtins.dict",
        "builtins.float",
        "builtins.int",
        "builtins.list",
        "builtins.str",
        "builtins.tuple",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.ndarray",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
    }
)


Kind = Literal["regression", "baseline", "statistical"]


class NotARegressionFamilyError(TypeError):
    """A Pipeline was asked of a family that forecasts from history alone."""


@dataclass(frozen=True)
class Family:
    """One model family: how to build it, what its files may contain, whether it is linear.

    Attributes:
        name: The name a spec gives (``model.family``).
        build: The spec's ``model.params`` to an unfitted estimator, the family's defaults added.
        scaled: Put a ``StandardScaler`` before the estimator.
        skops_types: Types a skops file of this family names beyond ``COMMON_SKOPS_TYPES``.
        linear: The estimator class when a fitted model is exactly ``x @ coef_ + intercept_``
            (stored as arrays, predicted stacked); None for any other family.
        closed_form: A fit of the whole Pipeline faster than ``Pipeline.fit`` giving the same
            model, used when every spec param is in ``closed_form_params``.
        closed_form_params: The params ``closed_form`` honours.
        kind: ``regression`` (a Pipeline on features), ``baseline`` or ``statistical`` (a
            forecast from the series' own history, ``ml.param_models``).
    """

    name: str
    build: Callable[[dict[str, Any]], Any]
    scaled: bool = False
    skops_types: frozenset[str] = frozenset()
    linear: type | None = None
    closed_form: Callable[[np.ndarray, np.ndarray, dict[str, Any]], Pipeline] | None = None
    closed_form_params: frozenset[str] = frozenset()
    kind: Kind = "regression"

    def pipeline(self, params: dict[str, Any]) -> Pipeline:
        """An unfitted Pipeline of this family with ``params`` (not modified)."""
        steps: list[tuple[str, Any]] = [("model", self.build(dict(params)))]
        if self.scaled:
            steps.insert(0, ("scale", StandardScaler()))
        return Pipeline(steps)

    def has_closed_form(self, params: dict[str, Any]) -> bool:
        """Whether ``closed_form`` can fit a model with these params."""
        return self.closed_form is not None and set(params) <= self.closed_form_params


def _seeded(cls: type, **defaults: Any) -> Callable[[dict[str, Any]], Any]:
    """A builder of ``cls`` with an explicit ``random_state`` and the given defaults."""

    def build(params: dict[str, Any]) -> Any:
        return cls(**{"random_state": DEFAULT_RANDOM_STATE, **defaults, **params})

    return build


def _no_pipeline(name: str, kind: Kind) -> Callable[[dict[str, Any]], Any]:
    """The ``build`` of a family that has no Pipeline: it raises, naming the family."""

    def build(params: dict[str, Any]) -> Any:
        raise NotARegressionFamilyError(
            f"model family {name!r} is a {kind} family: it forecasts a series from its own "
            "history (ml.param_models), it has no scikit-learn Pipeline"
        )

    return build


def _forecast_only(name: str, kind: Kind) -> Family:
    return Family(name, _no_pipeline(name, kind), kind=kind)


_BUILT_IN = (
    Family(
        "ridge",
        _seeded(Ridge),
        scaled=True,
        skops_types=frozenset({"sklearn.linear_model._ridge.Ridge"}),
        linear=Ridge,
        closed_form=fast_ridge.fit_ridge,
        closed_form_params=fast_ridge.PARAMS,
    ),
    Family(
        "linear",
        lambda params: LinearRegression(**params),
        scaled=True,
        skops_types=frozenset({"sklearn.linear_model._base.LinearRegression"}),
        linear=LinearRegression,
    ),
    Family(
        "hist_gradient_boosting",
        _seeded(HistGradientBoostingRegressor),
        skops_types=frozenset(
            {
                "numpy.random._generator.Generator",
                "numpy.uint64",
                "sklearn._loss._loss.CyHalfSquaredError",
                "sklearn._loss.link.IdentityLink",
                "sklearn._loss.link.Interval",
                "sklearn._loss.loss.HalfSquaredError",
                "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
                "sklearn.ensemble._hist_gradient_boosting.gradient_boosting."
                "HistGradientBoostingRegressor",
                "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            }
        ),
    ),
    Family(
        "random_forest",
        # Engines parallelise across series, not trees.
        _seeded(RandomForestRegressor, n_jobs=1),
        skops_types=frozenset(
            {
                "sklearn.ensemble._forest.RandomForestRegressor",
                "sklearn.tree._classes.DecisionTreeRegressor",
                "sklearn.tree._tree.Tree",
            }
        ),
    ),
    *(
        _forecast_only(name, "baseline")
        for name in ("naive", "seasonal_naive", "mean", "croston_sba", "tsb")
    ),
    *(_forecast_only(name, "statistical") for name in ("ets", "theta", "arima")),
)
BUILT_IN_NAMES = frozenset(f.name for f in _BUILT_IN)
_TABLE: dict[str, Family] = {f.name: f for f in _BUILT_IN}


class UnknownFamilyError(ValueError):
    """A family name that is not in the table."""


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """The names of every registered family (of ``kind``, if given), in registration order."""
    return tuple(n for n, f in _TABLE.items() if kind is None or f.kind == kind)


def family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        UnknownFamilyError: No family has that name.
    """
    try:
        return _TABLE[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; known families: {list(_TABLE)}"
        ) from None


def register(new: Family) -> Family:
    """Add a family to this process's table; returns it.

    Raises:
        ValueError: The name is taken, or its ``linear`` class has the class name of another
            family's (artifact headers name linear classes by class name).
    """
    if new.name in _TABLE:
        raise ValueError(f"model family {new.name!r} is already registered")
    if new.linear is not None and new.linear.__name__ in linear_classes():
        raise ValueError(f"a family already stores {new.linear.__name__} as linear")
    _TABLE[new.name] = new
    _clear_caches()
    return new


def unregister(name: str) -> None:
    """Remove a family added by ``register`` (built-in families stay).

    Raises:
        ValueError: ``name`` is a built-in family.
        UnknownFamilyError: No family has that name.
    """
    if name in BUILT_IN_NAMES:
        raise ValueError(f"model family {name!r} is built in")
    family(name)
    del _TABLE[name]
    _clear_caches()


@cache
def trusted_skops_types() -> frozenset[str]:
    """Every type a skops file of any registered family may name."""
    return COMMON_SKOPS_TYPES.union(*(f.skops_types for f in _TABLE.values()))


@cache
def linear_classes() -> MappingProxyType[str, type[Any]]:
    """The ``linear`` classes of the registered families, by class name."""
    found = {f.linear.__name__: f.linear for f in _TABLE.values() if f.linear is not None}
    return MappingProxyType(found)


@cache
def linear_types() -> tuple[type, ...]:
    """The ``linear`` classes as a tuple, for ``isinstance``."""
    return tuple(linear_classes().values())


def _clear_caches() -> None:
    for cached in (trusted_skops_types, linear_classes, linear_types):
        cached.cache_clear()
