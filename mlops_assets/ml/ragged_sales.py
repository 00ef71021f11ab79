"""The realistic mode of the sample sales data: ragged lives, missing weeks, slow movers.

Applied to a block of dense series (``sample_data._sales_chunk``, one row per series and week)
as masks and a demand pattern, drawn from the block's own generator (seeded apart from the
dense draws, so the default data stays as it was and a series still depends only on the seed
and its index):

- new series start after the first week, discontinued ones end before the last;
- some series miss a few weeks of their life (no row: the week never arrived), never the first
  or the last week of their life, so the life is what the rows show;
- slow movers sell in only some weeks (intermittent demand: zero sales the other weeks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEW_SHARE = 0.2  # series that start after the first week
DISCONTINUED_SHARE = 0.15  # series that end before the last week
GAPPY_SHARE = 0.3  # series that miss some weeks of their life
MISSING_RATE = 0.05  # a gappy series' chance to miss each inner week
SLOW_SHARE = 0.3  # intermittent series: zero sales in most weeks
SLOW_SELLING_WEEKS = (0.1, 0.5)  # a slow mover's share of weeks with sales, drawn per series


@dataclass(frozen=True)
class Raggedness:
    """One block's draws: each series' life ``[start, end)``, its kept rows and demand."""

    start: np.ndarray  # (count,) first week index of each series' life
    end: np.ndarray  # (count,) one past its last week
    present: np.ndarray  # (count, n_periods) a row exists for this series and week
    selling: np.ndarray  # (count, n_periods) sales may be non-zero this week
    slow: np.ndarray  # (count,) an intermittent series


def draw(rng: np.random.Generator, count: int, n_periods: int) -> Raggedness:
    """Lives, gaps and intermittency of ``count`` series over ``n_periods`` weeks."""
    u = rng.random((count, 5))
    new = u[:, 0] < NEW_SHARE
    discontinued = u[:, 1] < DISCONTINUED_SHARE
    gappy = u[:, 2] < GAPPY_SHARE
    slow = u[:, 3] < SLOW_SHARE
    selling_share = SLOW_SELLING_WEEKS[0] + u[:, 4] * np.diff(SLOW_SELLING_WEEKS)[0]
    # A new series starts anywhere up to its last week (some too short to model: fallbacks);
    # a discontinued one ends anywhere after its start, before the last week.
    start = np.where(new, rng.integers(1, max(n_periods, 2), size=count), 0)
    start = np.minimum(start, n_periods - 1)
    end_draw = start + 1 + np.floor(rng.random(count) * (n_periods - 1 - start)).astype(np.int64)
    end = np.where(discontinued & (start < n_periods - 1), end_draw, n_periods)
    t = np.arange(n_periods)
    alive = (t >= start[:, None]) & (t < end[:, None])
    inner = alive & (t > start[:, None]) & (t < end[:, None] - 1)
    missing = inner & gappy[:, None] & (rng.random((count, n_periods)) < MISSING_RATE)
    selling = ~slow[:, None] | (rng.random((count, n_periods)) < selling_share[:, None])
    return Raggedness(start, end, alive & ~missing, selling, slow)
