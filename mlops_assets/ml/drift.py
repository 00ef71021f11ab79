"""Input drift of scored data against training data, per numeric feature.

Two numbers per feature, both standard in model monitoring: the standardised mean difference
(how many reference standard deviations the mean moved) and the population stability index
over the reference's deciles (PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 large shift).
"""

from __future__ import annotations

import numpy as np

PSI_MODERATE, PSI_LARGE = 0.1, 0.25


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (deciles of reference)."""
    ref = reference[np.isfinite(reference)]
    cur = current[np.isfinite(current)]
    if len(ref) < 2 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: any other value is a shift
        return 0.0 if np.all(cur == ref[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    eps = 1e-6
    p = np.histogram(ref, edges)[0] / len(ref) + eps
    q = np.histogram(cur, edges)[0] / len(cur) + eps
    return float(np.sum((q - p) * np.log(q / p)))


def feature_drift(
    reference: dict[str, np.ndarray], current: dict[str, np.ndarray]
) -> list[dict[str, float | str]]:
    """Per feature: reference and current mean, standardised mean difference, PSI, verdict."""
    out: list[dict[str, float | str]] = []
    for name, ref in reference.items():
        cur = current.get(name)
        if cur is None:
            continue
        r, c = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        sd = float(np.std(r)) if len(r) > 1 else float("nan")
        smd = (float(np.mean(c)) - float(np.mean(r))) / sd if sd and len(c) else float("nan")
        value = psi(ref, cur)
        verdict = "large" if value > PSI_LARGE else "moderate" if value > PSI_MODERATE else "stable"
        out.append(
            {
                "feature": name,
                "reference_mean": float(np.mean(r)) if len(r) else float("nan"),
                "current_mean": float(np.mean(c)) if len(c) else float("nan"),
                "smd": smd,
                "psi": value,
                "verdict": verdict if np.isfinite(value) else "no data",
            }
        )
    return out
