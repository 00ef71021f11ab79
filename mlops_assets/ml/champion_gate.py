"""The champion gate: per series, whether the challenger replaces the champion, from errors.

The gate does not care where the errors come from: today one holdout window per series
(training's metrics, the champion re-scored on the same rows), later the folds of a
rolling-origin backtest. Every input is a per-series array, so 10,000 series are decided in one
vectorised pass. ``Errors`` pairs each error with the number of points it was measured on: a
champion or a baseline measured on other points than the challenger is never compared with it.

Rules, in order, for each series whose challenger was trained in this run:

1. ``below_threshold``: its error is above the business threshold (``max_metric``): never
   promoted; the champion, if any, stays.
2. ``below_baseline``: it does not beat the required baseline on the same points (seasonal naive
   by default, naive where seasonal naive could not be scored there, e.g. under a season of
   history; no baseline scored there counts as not beaten). The champion stays; a series
   without one is still given the challenger, flagged ``below_baseline``, so every series has a
   forecast (serving the baseline itself there is a later change).
3. ``no_champion``: the first model of the series: promoted. A fallback method on a series too
   short to backtest has no score; it is promoted only as a series' first model.
4. ``kept_unscored``: the champion could not be scored on the challenger's points: it stays
   (``unscored: promote`` promotes instead, as ``promoted_unscored``: a promotion without a
   comparison, counted as such).
5. ``better`` / ``not_better``: the challenger must reach ``champion * (1 - margin)``.

Series with no challenger trained in this run are ``skipped`` (the champion stays).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

BETTER = "better"
NOT_BETTER = "not_better"
BELOW_THRESHOLD = "below_threshold"
BELOW_BASELINE = "below_baseline"
NO_CHAMPION = "no_champion"
KEPT_UNSCORED = "kept_unscored"
PROMOTED_UNSCORED = "promoted_unscored"
SKIPPED = "skipped"
DECISIONS = (
    BETTER,
    NOT_BETTER,
    BELOW_THRESHOLD,
    BELOW_BASELINE,
    NO_CHAMPION,
    KEPT_UNSCORED,
    PROMOTED_UNSCORED,
    SKIPPED,
)
# The baselines a challenger must beat, first scored one wins.
BASELINE_RULES = {
    "seasonal_naive": ("seasonal_naive", "naive"),
    "naive": ("naive",),
    "none": (),
}
UNSCORED_RULES = ("keep", "promote")


@dataclass(frozen=True)
class Policy:
    """When a challenger replaces the champion of its series.

    Attributes:
        metric: Error metric compared (lower is better), a manifest column: ``smape``, ``mae``...
        margin: Relative improvement required: the challenger must reach
            ``champion * (1 - margin)`` or less. 0 promotes on any strict improvement; a negative
            margin tolerates a worse challenger (never use it outside tests and drills).
        max_metric: Business threshold: a challenger above it is never promoted (None: off).
        require_beats_baseline: The baseline a challenger must beat on the same points:
            ``seasonal_naive`` (falling back to ``naive`` where it could not be scored there),
            ``naive``, or ``none``.
        unscored: A series whose champion could not be scored on the challenger's points
            ``keep``s its champion, or ``promote``s the challenger without a comparison.
    """

    metric: str = "smape"
    margin: float = 0.02
    max_metric: float | None = None
    require_beats_baseline: str = "seasonal_naive"
    unscored: str = "keep"

    def __post_init__(self) -> None:
        if self.require_beats_baseline not in BASELINE_RULES:
            raise ValueError(
                f"require_beats_baseline={self.require_beats_baseline!r}: "
                f"one of {list(BASELINE_RULES)}"
            )
        if self.unscored not in UNSCORED_RULES:
            raise ValueError(f"unscored={self.unscored!r}: one of {list(UNSCORED_RULES)}")

    @property
    def baselines(self) -> tuple[str, ...]:
        """The baselines tried in order; the first scored on the challenger's points judges."""
        return BASELINE_RULES[self.require_beats_baseline]


@dataclass(frozen=True)
class Errors:
    """One model's (or baseline's) error per series and the points it was measured on.

    Attributes:
        value: Error per series, float64 (NaN: not scored).
        count: Points measured per series, int64 (0 where ``value`` is not finite).
    """

    value: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, value, count) -> Errors:
        """From array-likes; a NaN count reads as 0 points, a NaN error as 0 points too."""
        v = np.asarray(value, dtype=np.float64)
        c = np.nan_to_num(np.asarray(count, dtype=np.float64), nan=0.0).astype(np.int64)
        return cls(v, np.where(np.isfinite(v), np.broadcast_to(c, v.shape), 0))

    def on_points_of(self, other: Errors) -> np.ndarray:
        """Per series: scored on as many points as ``other`` (the same evaluation points)."""
        return np.isfinite(self.value) & (self.count == other.count) & (other.count > 0)


@dataclass(frozen=True)
class Decisions:
    """The gate's outcome per series.

    Attributes:
        decision: A ``DECISIONS`` value.
        promoted: The challenger becomes the series' model.
        reason: A sentence a person can read.
        compared: The champion was scored on the challenger's points.
        baseline: The baseline that judged the challenger ("" where none did).
        baseline_error: Its error (NaN where none did).
        below_baseline: The challenger does not beat the required baseline (promoted only as
            a first model, flagged).
    """

    decision: np.ndarray
    promoted: np.ndarray
    reason: np.ndarray
    compared: np.ndarray
    baseline: np.ndarray
    baseline_error: np.ndarray
    below_baseline: np.ndarray


def _pick_baseline(
    challenger: Errors, baselines: Mapping[str, Errors], order: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    n = len(challenger.value)
    name = np.full(n, "", dtype=object)
    error = np.full(n, np.nan)
    open_ = np.ones(n, dtype=bool)
    for b in order:
        if b not in baselines:
            continue
        ok = open_ & baselines[b].on_points_of(challenger)
        name[ok], error[ok] = b, baselines[b].value[ok]
        open_ &= ~ok
    return name, error


def decide_all(
    challenger_trained: np.ndarray,
    challenger: Errors,
    champion: Errors,
    has_champion: np.ndarray,
    baselines: Mapping[str, Errors],
    policy: Policy,
    *,
    first_unscored: np.ndarray | None = None,
) -> Decisions:
    """The decision of every series, vectorised (see the module docstring for the rules).

    Args:
        challenger_trained: The challenger was trained in this run.
        challenger: Its error on its evaluation points.
        champion: The champion's error re-scored on those points (NaN: could not be).
        has_champion: The series has a champion with a model.
        baselines: ``{"naive": Errors, "seasonal_naive": Errors}`` on those points.
        policy: Margin, business threshold, baseline and unscored rules.
        first_unscored: Challengers trained in this run that cannot be scored by design (a
            fallback method on a series too short to backtest): promoted as the series' first
            model where it has no champion, so every series has a forecast; else skipped.
    """
    c, k = challenger.value, champion.value
    trained = np.asarray(challenger_trained, dtype=bool) & np.isfinite(c) & (challenger.count > 0)
    has = np.asarray(has_champion, dtype=bool)
    fallback_first = np.zeros_like(trained)
    if first_unscored is not None:
        fallback_first = np.asarray(first_unscored, dtype=bool) & ~trained & ~has
    compared = trained & has & champion.on_points_of(challenger)
    base_name, base_err = _pick_baseline(challenger, baselines, policy.baselines)
    over = np.zeros_like(trained)
    if policy.max_metric is not None:
        over = trained & ~(c <= policy.max_metric)
    beats = (c < base_err) if policy.baselines else np.ones_like(trained)
    below_base = trained & ~over & ~beats
    judged = trained & ~over & ~below_base
    first = judged & ~has
    unscored = judged & has & ~compared
    promote_unscored = policy.unscored == "promote"
    with np.errstate(invalid="ignore"):
        bar = k * (1.0 - policy.margin)
        better = judged & compared & (c <= bar) & ((c < k) | (policy.margin < 0))
    decision = np.select(
        [fallback_first, ~trained, over, below_base, first, unscored, better],
        [
            NO_CHAMPION,
            SKIPPED,
            BELOW_THRESHOLD,
            BELOW_BASELINE,
            NO_CHAMPION,
            PROMOTED_UNSCORED if promote_unscored else KEPT_UNSCORED,
            BETTER,
        ],
        NOT_BETTER,
    ).astype(object)
    promoted = better | first | fallback_first | (below_base & ~has) | (unscored & promote_unscored)
    reason = _reasons(decision, has, challenger, champion, base_name, base_err, policy)
    if first_unscored is not None:
        kept = np.asarray(first_unscored, dtype=bool) & ~trained & has
        reason[kept] = (
            "the challenger is a fallback method (too short to backtest): the champion stays"
        )
    return Decisions(decision, promoted, reason, compared, base_name, base_err, below_base)


def _reasons(
    decision: np.ndarray,
    has: np.ndarray,
    challenger: Errors,
    champion: Errors,
    base_name: np.ndarray,
    base_err: np.ndarray,
    policy: Policy,
) -> np.ndarray:
    """One sentence per series; formatted per decision (strings are the only per-series loop)."""
    m, c, k, n = policy.metric, challenger.value, champion.value, challenger.count
    bar = k * (1.0 - policy.margin)
    reason = np.empty(len(c), dtype=object)

    def base(i: int) -> str:
        return f"{base_name[i]} baseline {base_err[i]:.3f}" if base_name[i] else ""

    def champ_vs(i: int) -> str:
        return f"{m} {c[i]:.3f} vs champion {k[i]:.3f} (needs <= {bar[i]:.3f})"

    def below(i: int) -> str:
        head = (
            f"{m} {c[i]:.3f} does not beat the {base(i)}"
            if base_name[i]
            else f"no baseline ({'/'.join(policy.baselines)}) scored on the same {n[i]} points"
        )
        return head + (
            "; the champion stays" if has[i] else "; first model, promoted flagged below_baseline"
        )

    def unscored(i: int) -> str:
        how = f"scored on {champion.count[i]} points" if champion.count[i] else "not scored"
        tail = "it stays" if decision[i] == KEPT_UNSCORED else "challenger promoted uncompared"
        return f"champion could not be scored on the challenger's {n[i]} points ({how}); {tail}"

    formats = {
        SKIPPED: lambda i: (
            "no challenger trained in this run" + ("; the champion stays" if has[i] else "")
        ),
        BELOW_THRESHOLD: lambda i: (
            f"{m} {c[i]:.3f} above the business threshold {policy.max_metric:g}"
        ),
        BELOW_BASELINE: below,
        NO_CHAMPION: lambda i: (
            "first model of the series (a fallback method; too short to backtest)"
            if not np.isfinite(c[i])
            else f"first model of the series ({m} {c[i]:.3f}"
            + (f"; {base(i)})" if base_name[i] else ")")
        ),
        KEPT_UNSCORED: unscored,
        PROMOTED_UNSCORED: unscored,
        BETTER: champ_vs,
        NOT_BETTER: champ_vs,
    }
    for d, fmt in formats.items():
        rows = np.flatnonzero(decision == d)
        reason[rows] = [fmt(int(i)) for i in rows]
    return reason


def decide(
    challenger: float | None,
    champion: float | None,
    policy: Policy,
    *,
    trained: bool = True,
    naive: float | None = None,
    seasonal_naive: float | None = None,
    points: int = 1,
    champion_points: int | None = None,
) -> tuple[str, bool, str]:
    """``decide_all`` for one series (None: no value / no champion).

    ``points`` is the challenger's evaluation points; the champion and the baselines count as
    scored on the same points unless ``champion_points`` says otherwise.
    """
    nan = float("nan")

    def errors(value: float | None, count: int) -> Errors:
        return Errors.of([nan if value is None else value], [count])

    d = decide_all(
        np.array([trained]),
        errors(challenger, points),
        errors(champion, points if champion_points is None else champion_points),
        np.array([champion is not None]),
        {"naive": errors(naive, points), "seasonal_naive": errors(seasonal_naive, points)},
        policy,
    )
    return str(d.decision[0]), bool(d.promoted[0]), str(d.reason[0])


def gate_counts(
    decision: np.ndarray, promoted: np.ndarray, compared: np.ndarray, has_champion: np.ndarray
) -> dict[str, int]:
    """What the gate did, counted: the figures the aggregate check and the registry report.

    ``promoted_without_comparison`` counts challengers that replaced a champion never scored
    on their points (0 unless ``unscored: promote``); first models are ``promoted_first``.
    """
    decision = np.asarray(decision, dtype=object)
    promoted = np.asarray(promoted, dtype=bool)
    compared = np.asarray(compared, dtype=bool)
    has = np.asarray(has_champion, dtype=bool)
    trained = decision != SKIPPED

    def n(mask: np.ndarray) -> int:
        return int(np.count_nonzero(mask))

    return {
        "challengers": n(trained),
        "with_champion": n(trained & has),
        "compared": n(compared),
        "promoted": n(promoted),
        "kept": n(trained & has & ~promoted),
        "kept_unscored": n(decision == KEPT_UNSCORED),
        "below_baseline": n(decision == BELOW_BASELINE),
        "below_threshold": n(decision == BELOW_THRESHOLD),
        "no_champion": n(decision == NO_CHAMPION),
        "promoted_first": n(promoted & ~has),
        "promoted_below_baseline": n(promoted & (decision == BELOW_BASELINE)),
        "promoted_without_comparison": n(promoted & has & ~compared),
        "skipped": n(~trained),
    }
