"""The ``mlops`` command: sample data, the demo, and helpers around the code location."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime

from mlops_assets.ml.sample_data import BAD_KINDS, SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.profiles import (
    current_profile,
    ensure_dagster_home,
    project_home,
    storage_for,
)
from mlops_assets.sample_drops import land_bad, land_diabetes, land_sales
from resources.storage import Storage


def _storage() -> Storage:
    return storage_for(current_profile(), project_home()).process_config_and_initialize()


def cmd_generate(args: argparse.Namespace) -> int:
    spec = load_spec(args.dataset)
    storage = _storage()
    t0 = time.perf_counter()
    if spec.name == "diabetes":
        landed = land_diabetes(storage, spec, args.drops, args.format)
    else:
        shape = SalesShape(args.series, args.periods, args.seed)
        landed = land_sales(storage, spec, shape, args.drops, args.format, progress=True)
    for kind in args.bad:
        good = sales_table(SalesShape(min(args.series, 5), 60, args.seed))
        landed.append(land_bad(storage, spec, good, kind))
    took = time.perf_counter() - t0
    for b in landed:
        print(f"  {storage.uri(b.name)}  ({b.size:,} bytes)")
    print(f"landed {len(landed)} drop(s) for {spec.name!r} in {took:.1f}s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from mlops_assets.definitions import daily_job_name, defs

    home = project_home()
    ensure_dagster_home(home)
    storage = _storage()
    sales, diabetes = load_spec("sales"), load_spec("diabetes")
    if not storage.list(f"landing/{sales.name}/"):
        land_sales(storage, sales, SalesShape(args.series, args.periods, seed=0), n_drops=2)
    if not storage.list(f"landing/{diabetes.name}/"):
        land_diabetes(storage, diabetes, n_drops=2)

    partition = args.as_of or datetime.now(UTC).strftime("%Y-%m-%d")
    definitions = defs()
    instance = dg.DagsterInstance.get()
    failed = []
    for spec in (sales, diabetes):
        job = definitions.resolve_job_def(daily_job_name(spec))
        print(f"running {job.name} for as-of date {partition} ...")
        result = job.execute_in_process(
            partition_key=partition, instance=instance, raise_on_error=False
        )
        print(f"  {job.name}: {'succeeded' if result.success else 'FAILED'} (run {result.run_id})")
        if not result.success:
            failed.append(job.name)
    print(
        f"\nResults are under {home}:\n"
        f"  storage (landing, curated, quarantine, ledger): {home / 'storage'}\n"
        f"  Dagster runs and materializations:              {os.environ['DAGSTER_HOME']}\n"
        "Open the Dagster UI with `make dev`, then http://127.0.0.1:3000 ."
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="land sample drops for a bundled dataset")
    gen.add_argument("dataset", choices=["sales", "diabetes"])
    gen.add_argument("--series", type=int, default=100)
    gen.add_argument("--periods", type=int, default=156)
    gen.add_argument("--drops", type=int, default=1, help="a history drop, then one per period")
    gen.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--bad", action="append", default=[], choices=BAD_KINDS, metavar="KIND")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="generate a small dataset and run the daily jobs")
    demo.add_argument("--series", type=int, default=50)
    demo.add_argument("--periods", type=int, default=156)
    demo.add_argument("--as-of", help="partition (YYYY-MM-DD); default today, UTC")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
