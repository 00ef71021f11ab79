"""Every figure ``make bench`` measures against its target, from the results' JSON, in one table.

    python -m benchmarks.targets                 # the latest results in benchmarks/results/
    python -m benchmarks.targets --since ISO     # results written before ISO count as stale

``run_all`` prints it after a full run and writes it to ``benchmarks/results/targets.json``.
The targets are those of docs/architecture.md §4 that a benchmark measures on one machine, and
``bench_registry``'s own (a 10,000-model set registered and promoted in 5 s); the rest (a Blob
drop to its scoring run within one sensor interval, forecast quality on the real panels) are
measured by the tests and by ``bench_forecast_quality``.

A figure is ``met``, ``missed``, ``small`` (measured at smaller sizes than the target's, as
``--quick`` runs: shown, never counted as met), ``stale`` (its result predates ``--since``: not
from this run) or ``absent`` (the benchmark did not run or wrote no such field).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import RESULTS

Results = dict[str, dict]


@dataclass(frozen=True)
class Target:
    what: str
    source: str  # the result file's name, without ``.json``
    figure: Callable[[dict], float | None]
    limit: float
    at_most: bool = True  # False: the figure must be at least the limit
    unit: str = ""
    # Whether the result was measured at the target's sizes (not a ``--quick`` run).
    full_size: Callable[[dict], bool] = lambda r: True


@dataclass(frozen=True)
class Verdict:
    what: str
    measured: float | None
    limit: float
    at_most: bool
    unit: str
    status: str  # met, missed, small, stale, absent
    at: str | None  # when the result was written

    def line(self) -> str:
        sign = "≤" if self.at_most else "≥"
        return (
            f"{self.status:7} {self.what}: {_number(self.measured)}{self.unit} "
            f"({sign} {_number(self.limit)}{self.unit})"
        )


def _number(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if math.isfinite(x) and abs(x) >= 10_000 else f"{x:.4g}"


def _get(result: dict, *path: str) -> float | None:
    """The number at ``path`` in a result; None where it is missing or not a number."""
    node: object = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _worst(*values: float | None) -> float | None:
    """The largest of ``values``; None if any is missing (a figure not measured is not met)."""
    known = [v for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


def _chain_size(r: dict) -> bool:
    return r.get("series", 0) >= 10_000 and r.get("rows", 0) >= 40_000_000


def _serving_size(r: dict) -> bool:
    return r.get("series", 0) >= 1_000 and r.get("rounds", 0) >= 3


def _spark_size(r: dict) -> bool:
    return r.get("rows", 0) >= 2_000_000


def _serving(workers: str, rate: str) -> Callable[[dict], float | None]:
    return lambda r: _get(r, "vs_bare", workers, rate, "p99_ms")


def _first_request_p99(r: dict) -> float | None:
    return _worst(*(_get(r, "configs", c, "cold", "p99_ms") for c in ("scoring/1w", "scoring/2w")))


def _serving_errors(r: dict) -> float | None:
    configs = r.get("configs") or {}
    if not configs:
        return None
    total = 0.0
    for config in configs.values():
        phases = [*(config.get("rates") or {}).values(), config.get("cold") or {}]
        total += sum(float(p.get("errors", 0)) for p in phases)
    return total


def _spark_driver_share(r: dict) -> float | None:
    """The engine's driver growth as a share of the table's size in memory (a collect would
    need all of it); the benchmark itself fails past a quarter."""
    growth, table = _get(r, "engine_driver_python_growth_mb"), _get(r, "table_arrow_mb")
    return None if growth is None or not table else growth / table


def _validation_rate(r: dict) -> float | None:
    rates = [x.get("gate_rows_per_s") for x in r.get("results") or []]
    return float(min(rates)) if rates and None not in rates else None


def _refit_difference(r: dict) -> float | None:
    diff = _get(r, "daily_vs_full_refit", "max_relative_coef_difference")
    same = (r.get("daily_vs_full_refit") or {}).get("fingerprints_equal")
    return None if diff is None or same is None else (diff if same else math.inf)


TARGETS = [
    Target(
        "cold start, 10,000 series / 40M rows",
        "chain",
        lambda r: _get(r, "cold_start", "wall_s"),
        25.0,
        unit=" s",
        full_size=_chain_size,
    ),
    Target(
        "daily retrain of one new week",
        "chain",
        lambda r: _get(r, "daily_retrain", "wall_s"),
        10.0,
        unit=" s",
        full_size=_chain_size,
    ),
    Target(
        "daily coefficients against a full refit (relative; fingerprints equal)",
        "chain",
        _refit_difference,
        1e-9,
    ),
    Target(
        "Dagster orchestration, share of the training step (worse of cold and daily)",
        "chain",
        lambda r: _worst(
            _get(r, "cold_start", "overhead_vs_training"),
            _get(r, "daily_retrain", "overhead_vs_training"),
        ),
        0.05,
        full_size=_chain_size,
    ),
    Target(
        "100,000 ragged series, cold chain",
        "scale",
        lambda r: _get(r, "cold_chain", "wall_s"),
        120.0,
        unit=" s",
        full_size=lambda r: r.get("series", 0) >= 100_000,
    ),
    Target(
        "100,000 ragged series, peak memory (PSS)",
        "scale",
        lambda r: _get(r, "peak_pss_mb"),
        8192.0,
        unit=" MB",
        full_size=lambda r: r.get("series", 0) >= 100_000,
    ),
    Target(
        "local training engine over its numpy floor",
        "training",
        lambda r: _get(r, "local_vs_numpy_floor"),
        1.0,
        full_size=_chain_size,
    ),
    Target(
        "validation throughput (the gate, smallest of its sizes)",
        "validation",
        _validation_rate,
        2_500_000.0,
        at_most=False,
        unit=" rows/s",
        full_size=lambda r: min(x.get("rows", 0) for x in r.get("results") or [{}]) >= 10_000_000,
    ),
    Target(
        "batch scoring 40M rows over its floor",
        "batch_scoring",
        lambda r: _get(r, "ratio_to_baseline"),
        1.5,
        full_size=lambda r: r.get("rows", 0) >= 40_000_000,
    ),
    *(
        Target(
            f"serving warm p99 over the bare server, {w[0]} worker{'s' if w[0] != '1' else ''}, "
            f"{rate}/s",
            "serving",
            _serving(w, rate),
            1.3,
            full_size=_serving_size,
        )
        for w in ("1w", "2w")
        for rate in ("200", "500")
    ),
    Target(
        "serving first-request p99",
        "serving",
        _first_request_p99,
        20.0,
        unit=" ms",
        full_size=_serving_size,
    ),
    Target("serving errors", "serving", _serving_errors, 0.0),
    Target(
        "Spark standalone cluster over a bare applyInPandas",
        "spark_cluster",
        lambda r: _get(r, "engine_over_bare"),
        1.2,
        full_size=_spark_size,
    ),
    Target(
        "Spark driver growth, share of the table (no collect)",
        "spark_cluster",
        _spark_driver_share,
        0.25,
    ),
    Target(
        "register and promote a 10,000-model set",
        "registry",
        lambda r: _get(r, "register_plus_promote_s"),
        5.0,
        unit=" s",
        full_size=lambda r: r.get("series", 0) >= 10_000,
    ),
]


def load(folder: Path = RESULTS) -> Results:
    """Every result in ``folder`` by name (``chain`` for ``chain.json``); unreadable ones skipped."""
    out: Results = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def _stale(result: dict, since: datetime | None) -> bool:
    if since is None:
        return False
    try:
        return datetime.fromisoformat(result["at"]) < since
    except (KeyError, TypeError, ValueError):
        return True  # no time written: not known to be from this run


def verdicts(results: Results, since: datetime | None = None) -> list[Verdict]:
    out = []
    for t in TARGETS:
        result = results.get(t.source)
        measured = t.figure(result) if result is not None else None
        at = result.get("at") if result is not None else None
        if result is None or measured is None:
            status = "absent"
        elif _stale(result, since):
            status = "stale"
        elif not t.full_size(result):
            status = "small"
        else:
            ok = (operator.le if t.at_most else operator.ge)(measured, t.limit)
            status = "met" if ok else "missed"
        out.append(Verdict(t.what, measured, t.limit, t.at_most, t.unit, status, at))
    return out


def report(found: list[Verdict], run_minutes: float | None = None) -> str:
    lines = [v.line() for v in found]
    if run_minutes is not None:
        ok = "met" if run_minutes <= 30 else "missed"
        lines.append(f"{ok:7} make bench wall time: {run_minutes:.1f} min (≤ 30 min)")
    met = sum(v.status == "met" for v in found)
    lines.append(f"{met} of {len(found)} figures met their target")
    return "\n".join(lines)


def _finite(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def write(found: list[Verdict], run_minutes: float | None, folder: Path = RESULTS) -> Path:
    path = folder / "targets.json"
    folder.mkdir(exist_ok=True)
    body = {
        "all_met": all(v.status == "met" for v in found)
        and (run_minutes is None or run_minutes <= 30),
        "run_minutes": None if run_minutes is None else round(run_minutes, 1),
        # A non-finite figure (coefficients compared on different data) is written as text.
        "figures": [
            {**asdict(v), "measured": v.measured if _finite(v.measured) else str(v.measured)}
            for v in found
        ],
    }
    path.write_text(json.dumps(body, indent=2, allow_nan=False, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--since", help="ISO time: results written before it are stale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    since = datetime.fromisoformat(args.since) if args.since else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # the results' times are UTC
    print(report(verdicts(load(args.results), since)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
