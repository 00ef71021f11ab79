"""Run every benchmark, one process each (so peak memory and imports don't mix), in order.

    python -m benchmarks.run_all            # the sizes of docs/architecture.md §4: 10,000 series x 4,000 weeks
    python -m benchmarks.run_all --quick    # small sizes, a few minutes: a smoke run

Each benchmark writes benchmarks/results/<name>.json with its baseline from the same run.
Those in ``REAL_DATA`` read a real panel from the folder MLOPS_REAL_DATA names
(docs/example-beer.md) and are skipped when it is not set.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from benchmarks import targets

FULL = {
    "bench_ingest": [],
    "bench_validation": [],
    "bench_training": [],
    "bench_registry": [],
    "bench_chain": [],
    # 100,000 ragged series (~21M rows) cold chain: ~2 min quiet, ~4 min at load average 6.
    "bench_scale": [],
    "bench_batch_scoring": [],
    "bench_serving": [],
    "bench_incremental": [],
    "bench_spark_cluster": ["--series", "2000", "--periods", "1000"],
    # 500 beer series (471 long enough for the folds): 334 s on 2 cores at load 1.5-2.8.
    "bench_zoo_cv": ["--max-series", "500"],
}
QUICK = {
    "bench_ingest": ["--series", "500", "--periods", "400"],
    "bench_validation": ["--rows", "1000000", "--repeats", "1"],
    "bench_training": ["--series", "300", "--periods", "400", "--skip-sklearn-loop"],
    "bench_registry": ["--series", "1000"],
    "bench_chain": ["--series", "300", "--periods", "300"],
    "bench_scale": ["--series", "2000", "--periods", "104"],
    "bench_batch_scoring": ["--series", "300", "--periods", "400"],
    "bench_serving": ["--quick"],  # its own short phases (200 series): < 3 min
    "bench_incremental": ["--series", "1000"],
    "bench_spark_cluster": ["--series", "200", "--periods", "300", "--repeats", "1"],
    "bench_zoo_cv": ["--max-series", "100"],
}
REAL_DATA = {"bench_zoo_cv"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="benchmark names, e.g. bench_chain")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    failed = []
    since, started_run = datetime.now(UTC).replace(microsecond=0), time.perf_counter()
    for name, extra in plan.items():
        if args.only and name not in args.only:
            continue
        if name in REAL_DATA and not os.environ.get("MLOPS_REAL_DATA"):
            print(f"== {name}: skipped (set MLOPS_REAL_DATA to the folder of the real panels)")
            continue
        started = time.perf_counter()
        print(f"== {name} {' '.join(extra)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *extra])
        print(f"== {name}: exit {rc} in {time.perf_counter() - started:.0f}s", flush=True)
        if rc:
            failed.append(name)
    minutes = (time.perf_counter() - started_run) / 60
    # Against the targets: this run's results only (--only: the latest of each, whenever).
    found = targets.verdicts(targets.load(), None if args.only else since)
    print("== targets (docs/architecture.md §4)")
    print(targets.report(found, None if args.only or args.quick else minutes), flush=True)
    if not args.only and not args.quick:
        targets.write(found, minutes)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
