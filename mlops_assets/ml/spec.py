"""Dataset specs: which columns are keys, time, target and features, and how to model them.

A spec is plain data (YAML validated with pydantic). Every stage reads it: ingestion types and
lays out the data with it, validation derives its expectations from it, training builds features
and models from it. Nothing here imports Dagster or Azure.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlops_assets.ml import families

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


class ColumnType(StrEnum):
    string = "string"
    float = "float"
    int = "int"
    bool = "bool"
    date = "date"
    timestamp = "timestamp"

    @property
    def arrow(self) -> pa.DataType:
        return {
            "string": pa.string(),
            "float": pa.float64(),
            "int": pa.int64(),
            "bool": pa.bool_(),
            "date": pa.date32(),
            "timestamp": pa.timestamp("us"),
        }[self.value]


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ColumnType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = Field(
        default=None, description="Allowed values; anything else is an unknown category."
    )


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lags: list[int] = Field(default_factory=list, description="Target lags, in periods.")
    rolling: list[int] = Field(
        default_factory=list, description="Windows of rolling target means, in periods."
    )
    calendar: list[Literal["week_of_year", "month", "day_of_week", "fourier_year"]] = Field(
        default_factory=list
    )
    exogenous: list[str] = Field(
        default_factory=list, description="Columns used as they are (price, promotion...)."
    )
    known_in_advance: list[str] = Field(
        default_factory=list,
        description="Exogenous columns whose future values are known when forecasting (planned "
        "prices, holidays); a multi-step forecast carries the others' last value forward.",
    )

    @model_validator(mode="after")
    def _known_are_exogenous(self) -> FeatureSpec:
        unknown = [c for c in self.known_in_advance if c not in self.exogenous]
        if unknown:
            raise ValueError(f"features.known_in_advance names non-exogenous columns: {unknown}")
        return self


SelectionMetric = Literal["mae", "rmse", "smape", "mase"]


class CombineSpec(BaseModel):
    """How ``choice: combine`` weighs the candidates of a series (``ml.combination``).

    Each candidate's score is taken relative to the series' geometric mean score (on a log
    scale), mixed with the candidate's mean relative score over a deterministic sample of the
    run's series (the panel prior), and turned into weights by a softmax.
    """

    model_config = ConfigDict(extra="forbid")

    shrinkage: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of the panel prior in each candidate's log score (0: the series' own "
        "backtest only; 1: the same weights for every series).",
    )
    temperature: float = Field(
        default=0.25,
        gt=0.0,
        description="Softmax temperature on the log scores: smaller favours the best candidate "
        "more (0.25: a candidate with twice the error gets about 1/16 of the weight).",
    )
    min_weight: float = Field(
        default=0.05,
        ge=0.0,
        lt=0.5,
        description="Members below this weight are dropped and the rest renormalised.",
    )
    prior_series: int = Field(
        default=256,
        ge=1,
        description="Series in the deterministic sample the panel prior is estimated on.",
    )
    prior: dict[str, float] | None = Field(
        default=None,
        description="Each candidate's panel prior (mean log score relative to the series' "
        "geometric mean). None: the engines estimate it for each run before training; each "
        "manifest row records it (``combine_prior``).",
    )


class RefitSpec(BaseModel):
    """Exact incremental fits of the ridge family between full refits (``ml.incremental``)."""

    model_config = ConfigDict(extra="forbid")

    full_every_days: int = Field(
        ge=1,
        description="Days between full refits (every family, backtest and selection); each "
        "full refit stores every ridge series' sufficient statistics beside its model "
        "(``ridge_stats.parquet``) for the daily incremental updates in between.",
    )


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str = Field(
        default="ridge",
        description="A regression family of the table of ``families``: the one fitted on "
        "features with ``params``.",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    candidates: list[str] = Field(
        default_factory=list,
        description="More families (any kind) a backtest may choose per series; empty: only "
        "``family``.",
    )
    select_by: SelectionMetric = Field(
        default="mae", description="The backtest metric that chooses among the candidates."
    )
    choice: Literal["best", "combine"] = Field(
        default="best",
        description="``best``: each series keeps the candidate with the best backtest score. "
        "``combine``: each series' forecast is a weighted mean of the candidates, weighted by "
        "their backtest scores shrunk toward the run's panel-wide scores (``combine``).",
    )
    combine: CombineSpec = Field(default_factory=CombineSpec)
    refit: RefitSpec | None = Field(
        default=None,
        description="Incremental daily fits of the ridge family; None: every run refits all.",
    )

    @model_validator(mode="after")
    def _refit_needs_closed_form(self) -> ModelSpec:
        if self.refit is not None and not families.family(self.family).has_closed_form(self.params):
            raise ValueError(
                f"model.refit needs a family fitted from its moments (ridge with only "
                f"alpha/random_state params); got {self.family!r} with {sorted(self.params)}"
            )
        if self.refit is not None and (
            set(self.candidates) - {self.family} or self.choice != "best"
        ):
            raise ValueError(
                "model.refit refreshes the ridge between full refits, so the family choice "
                "must be the ridge alone: remove model.candidates (a model zoo is refit in "
                "full every run) or model.refit"
            )
        return self

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        # Raises UnknownFamilyError, a ValueError, for a name not in the table.
        if families.family(v).kind != "regression":
            raise ValueError(
                f"model.family {v!r} is a {families.family(v).kind} family; model.family names "
                f"the regression family (one of {list(families.names('regression'))}); list "
                "other families in model.candidates"
            )
        return v

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, v: list[str]) -> list[str]:
        for name in v:
            families.family(name)
        return v

    @property
    def candidate_names(self) -> tuple[str, ...]:
        """``family`` then the candidates, each once, in order."""
        return tuple(dict.fromkeys([self.family, *self.candidates]))


class DriftBands(BaseModel):
    """How far a drop's statistics may move from the reference window, in reference sigmas."""

    model_config = ConfigDict(extra="forbid")

    warn_sigmas: float = 3.0
    error_sigmas: float = 6.0
    reference_periods: int = 52
    min_sigma_fraction: float = Field(
        default=0.01,
        ge=0,
        description="Floor of a band's sigma, as a fraction of its center (a flat history "
        "would otherwise give a zero-width band).",
    )


class ExtraExpectation(BaseModel):
    """One more great-expectations 1.x expectation for a dataset, beyond what the spec implies.

    Row-level types (``expect_column_values_to_be_between``, ``..._to_be_in_set``,
    ``..._to_match_regex``, ``..._to_not_match_regex``, ``..._value_lengths_to_be_between``,
    ``..._to_not_be_null``, ``expect_compound_columns_to_be_unique``) quarantine failing rows;
    any other type is a drop-level expectation that GX runs on the drop's rows.
    """

    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=r"^expect_[a-z_]+$", description="GX expectation type (snake_case).")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    rule: str | None = Field(default=None, description="Rule name in reports (custom.<type>).")
    severity: Literal["error", "warn"] = "error"

    @property
    def rule_name(self) -> str:
        return self.rule or f"custom.{self.type.removeprefix('expect_')}"


class ValidationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_rows_per_drop: int = 1
    max_rows_per_drop: int | None = None
    max_age_days: int | None = Field(
        default=None, description="Freshness: the newest timestamp may be at most this old."
    )
    earliest: str | None = Field(
        default=None, description="Timestamps before this date are rejected as implausible."
    )
    drift: DriftBands = Field(default_factory=DriftBands)
    max_quarantined_share: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Quarantine is handled up to this share of the rows an ingestion run read "
        "(failing rows, and every row of a file quarantined whole): the checks that found them "
        "fail with WARN and training goes on. Above it they fail with ERROR and the run's "
        "downstream assets do not run.",
    )
    expectations: list[ExtraExpectation] = Field(
        default_factory=list, description="Extra GX expectations for this dataset."
    )


FillRule = Literal["zero", "ffill", "none"]
FallbackMethod = Literal["seasonal_naive", "naive", "mean", "croston_sba", "tsb"]


class CalendarSpec(BaseModel):
    """How rows map onto the calendar of ``frequency`` (see ``ml.calendar``)."""

    model_config = ConfigDict(extra="forbid")

    off_calendar: Literal["quarantine", "snap"] = Field(
        default="quarantine",
        description="A timestamp off the frequency's anchor (a Thursday in a W-MON spec): "
        "quarantine the row (rule time.off_calendar) or snap it to its period.",
    )
    fill: dict[str, FillRule] = Field(
        default_factory=dict,
        description="What a missing period means per column (target or exogenous): zero (no "
        "row means none sold), ffill (last value holds, e.g. a price), none (unknown: NaN). "
        "The key `default` applies to unnamed columns; without it, none.",
    )


class BacktestSpec(BaseModel):
    """Rolling-origin backtest at the horizon (see ``ml.backtest``)."""

    model_config = ConfigDict(extra="forbid")

    origins: int = Field(default=4, ge=1, description="Forecast origins per series.")
    step: int = Field(default=1, ge=1, description="Periods between consecutive origins.")


class IntervalSpec(BaseModel):
    """Conformal prediction intervals from backtest residuals (see ``ml.intervals``)."""

    model_config = ConfigDict(extra="forbid")

    levels: list[float] = Field(
        default_factory=list, description="Coverage levels in percent, e.g. [80, 95]; none: off."
    )
    min_residuals: int | None = Field(
        default=None,
        ge=1,
        description="Fewer residuals per (series, step) than this: use the pooled quantile. "
        "Default: the fewest that give a finite quantile at the level.",
    )
    own_error_weight: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="How much a series' own backtest error sets its scale for the pooled "
        "quantile: scale = MASE scale^(1-w) x own MAE^w. 0: the MASE scale alone, which widens "
        "the intervals of series the model forecasts much better than naive (95% coverage "
        "0.98 on Walmart); 0.25 kept 95% coverage in 0.93-0.98 on nine real evaluation "
        "windows (docs/forecasting.md).",
    )

    @field_validator("levels")
    @classmethod
    def _levels_in_range(cls, v: list[float]) -> list[float]:
        if any(not 0 < level < 100 for level in v):
            raise ValueError(f"interval levels must be in (0, 100) percent: {v}")
        return v


class MonitoringSpec(BaseModel):
    """When production accuracy says a series degraded (``ml.accuracy.degraded_series``)."""

    model_config = ConfigDict(extra="forbid")

    degraded_ratio: float = Field(
        default=1.5,
        gt=1.0,
        description="A series is degraded when its production MAE exceeds its backtest MAE "
        "(the manifest's ``mae``) by this factor.",
    )
    min_points: int = Field(
        default=4,
        ge=1,
        description="Actuals a series needs from the model set that predicted them before it "
        "can be judged degraded.",
    )
    retrain: bool = Field(
        default=True,
        description="Start a retrain of the degraded series only (the daily job with "
        "``series`` set); false: alert only.",
    )
    max_series: int = Field(
        default=500,
        ge=1,
        description="At most this many degraded series are retrained by one run (the worst "
        "first); the rest wait for the next accuracy materialization.",
    )
    lookback_periods: int = Field(
        default=26,
        ge=1,
        description="Accuracy is measured on the predicted periods of the last this many "
        "periods before the as-of date; prediction files written before that window (less "
        "the horizon) are not read, so a day's measurement stays bounded however long the "
        "project runs.",
    )


class DatasetSpec(BaseModel):
    """What a dataset looks like and how its many models are trained."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    series_keys: list[str] = Field(min_length=1)
    time: str
    target: str
    columns: dict[str, Column]
    frequency: str = Field(description="pandas offset alias of the series, e.g. W-MON or D.")
    horizon: int = Field(ge=1, description="Periods ahead the models forecast.")
    holdout: int = Field(ge=1, description="Trailing periods held out to evaluate each model.")
    min_history: int = Field(ge=1, description="Fewer training periods than this: skip series.")
    history_start: date | None = Field(
        default=None,
        description="The first as-of date of the daily chain (its first Dagster partition), "
        "so past dates can be backfilled; default: mlops_assets.partitions."
        "DEFAULT_HISTORY_START.",
    )
    features: FeatureSpec = Field(default_factory=FeatureSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    calendar: CalendarSpec = Field(default_factory=CalendarSpec)
    fallback: list[FallbackMethod] = Field(
        default_factory=list,
        description="Forecasts without fitting, tried in order for a series the model cannot "
        "serve (e.g. [seasonal_naive, naive, mean]); empty: no fallback.",
    )
    mean_window: int = Field(
        default=13, ge=1, description="Observed values the `mean` fallback averages."
    )
    backtest: BacktestSpec = Field(default_factory=BacktestSpec)
    intervals: IntervalSpec = Field(default_factory=IntervalSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @field_validator("columns")
    @classmethod
    def _columns_not_empty(cls, v: dict[str, Column]) -> dict[str, Column]:
        if not v:
            raise ValueError("a spec needs at least one column")
        return v

    @model_validator(mode="after")
    def _references_exist(self) -> DatasetSpec:
        named = {
            "series_keys": self.series_keys,
            "time": [self.time],
            "target": [self.target],
            "features.exogenous": self.features.exogenous,
        }
        for field, cols in named.items():
            missing = [c for c in cols if c not in self.columns]
            if missing:
                raise ValueError(f"{field} names columns not in `columns`: {missing}")
        filled = [c for c in self.calendar.fill if c != "default" and c not in self.columns]
        if filled:
            raise ValueError(f"calendar.fill names columns not in `columns`: {filled}")
        window = self.horizon + (self.backtest.origins - 1) * self.backtest.step
        if window > self.holdout:
            raise ValueError(
                f"the backtest needs horizon + (origins - 1) * step = {window} evaluation "
                f"periods but holdout is {self.holdout}: raise holdout or lower origins/step"
            )
        if self.columns[self.time].type not in (ColumnType.date, ColumnType.timestamp):
            raise ValueError(f"time column {self.time!r} must be of type date or timestamp")
        if self.columns[self.target].type not in (ColumnType.float, ColumnType.int):
            raise ValueError(f"target column {self.target!r} must be numeric")
        return self

    @property
    def key_columns(self) -> list[str]:
        """Series keys followed by time: what makes a row unique."""
        return [*self.series_keys, self.time]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(n, c.type.arrow, nullable=c.nullable) for n, c in self.columns.items()]
        )

    def series_id(self, values: tuple | list) -> str:
        """A readable series name, e.g. ``store=S0001/product=P001``."""
        return "/".join(f"{k}={v}" for k, v in zip(self.series_keys, values, strict=True))

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetSpec:
        with open(path, encoding="utf-8") as f:
            return cls.model_validate(yaml.safe_load(f))


def load_spec(name_or_path: str) -> DatasetSpec:
    """Load a bundled spec by name (``sales``, ``diabetes``) or any spec YAML by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        bundled = sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no dataset spec at {path}; bundled specs: {bundled}")
    return DatasetSpec.from_yaml(path)


def bundled_specs() -> list[DatasetSpec]:
    return [DatasetSpec.from_yaml(p) for p in sorted(SPECS_DIR.glob("*.yaml"))]
