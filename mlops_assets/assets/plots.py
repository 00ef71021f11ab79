"""Plots for asset metadata: PNGs embedded in Markdown, which the Dagster UI renders inline."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from mlops_assets.ml.spec import DatasetSpec


def _png_markdown(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # Fixed margins (sized for a title, axis labels and tick labels): ``bbox_inches="tight"``
    # draws the figure twice to measure it.
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.17, top=0.88)
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def lines(series: dict[str, np.ndarray], title: str, xlabel: str, ylabel: str) -> str:
    """One line per entry over x = 1, 2, ... (e.g. MAE per horizon step) as Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for label, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _png_markdown(fig, title)


def histograms(series: dict[str, np.ndarray], title: str, xlabel: str) -> str:
    """Overlaid histograms (e.g. model vs naive baseline sMAPE across series) as Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    finite = {k: v[np.isfinite(v)] for k, v in series.items()}
    both = np.concatenate([v for v in finite.values() if len(v)] or [np.zeros(1)])
    hi = float(np.quantile(both, 0.99)) if len(both) else 1.0
    bins = np.linspace(0, hi if hi > 0 else 1.0, 40)
    for label, values in finite.items():
        med = float(np.median(values)) if len(values) else float("nan")
        ax.hist(
            np.clip(values, 0, bins[-1]),
            bins=bins.tolist(),
            histtype="step",  # one outline per series, not a patch per bar
            linewidth=1.5,
            label=f"{label} (median {med:.3g})",
        )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("series")
    ax.legend()
    return _png_markdown(fig, title)


def backtest_plots(ok: pd.DataFrame, spec: DatasetSpec, what: str) -> dict[str, str]:
    """A set's backtest as two Markdown plots: sMAPE across series (model vs both naive
    baselines) and mean MAE per horizon step, over the rows of ``ok`` (manifest records of
    series with a trained model; ``what`` names the set in the titles)."""
    from mlops_assets.domain.training_run import mae_by_step

    by_step = mae_by_step(ok, spec)
    return {
        "backtest_smape": histograms(
            {
                "model": ok.smape.to_numpy(float),
                "naive": ok.naive_smape.to_numpy(float),
                "seasonal naive": ok.seasonal_naive_smape.to_numpy(float),
            },
            f"{spec.name} {what}: backtest sMAPE across series ({spec.backtest.origins} "
            f"origins, horizon {spec.horizon})",
            "sMAPE (%)",
        ),
        "backtest_mae_by_step": lines(
            {
                "model": np.asarray(by_step["mae"]),
                "naive": np.asarray(by_step["naive_mae"]),
                "seasonal naive": np.asarray(by_step["seasonal_naive_mae"]),
            },
            f"{spec.name} {what}: backtest MAE by horizon step (mean over series)",
            "periods ahead",
            "MAE",
        ),
    }
