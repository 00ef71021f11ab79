"""``mlops backfill``: add past as-of dates to a dataset's partitions, and run them.

A dataset's as-of axis holds only the dates that were launched (``mlops_assets.partitions``), so
backfilling history starts by adding its dates. Then either:

* nothing more: launch them from the UI (the daily job's "Materialize all…", select the
  dates: one Dagster backfill), or
* ``--run``: one run of the daily job per date, in order, in this process (as ``mlops demo``;
  Dagster's events go to ``$MLOPS_HOME/backfill/dagster.log``), or
* ``--url``: one run per date queued on a deployed instance (``mlops launch``'s path; the
  dates are added there).
"""

from __future__ import annotations

import argparse
from typing import Any

import dagster as dg

from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.partitions import add_as_of_dates, as_of_dates, as_of_partitions_name
from mlops_assets.profiles import ensure_dagster_home, project_home


def _run_here(spec: DatasetSpec, keys: list[str], instance: dg.DagsterInstance) -> int:
    """One in-process run of the daily job per date; 1 at the first failed run."""
    from mlops_assets.definitions import daily_job_name, defs
    from mlops_assets.demo_run import run_with_progress
    from mlops_assets.logging_setup import file_logger, log_to_file
    from mlops_assets.run_report import explain_failure

    job = defs().resolve_job_def(daily_job_name(spec))
    log_path = project_home() / "backfill" / "dagster.log"
    print(f"running {job.name} for {len(keys)} date(s); Dagster's events go to {log_path}")
    with log_to_file(log_path) as handler:
        log = file_logger(handler)
        for key in keys:
            print(f"{spec.name} {key}:")
            result = run_with_progress(job, spec, log, print, instance=instance, partition_key=key)
            if not result.success:
                print(f"{job.name} [{key}] failed (run {result.run_id}):")
                for line in explain_failure(result):
                    print(f"  {line}")
                return 1
    return 0


def _launch_there(spec: DatasetSpec, keys: list[str], url: str, location: str) -> int:
    from mlops_assets.definitions import daily_job_name
    from mlops_assets.remote_runs import Deployment

    deployment = Deployment(url=url, location=location)
    for key in keys:  # the deployment's queue runs them one at a time (the writer pool)
        run_id = deployment.launch(
            daily_job_name(spec), partition=key, tags={"mlops/trigger": "backfill"}
        )
        print(f"queued {key}: {deployment.run_url(run_id)}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    spec = load_spec(args.dataset)
    keys = as_of_dates(spec, args.start, args.end, args.every)
    if args.url:
        return _launch_there(spec, keys, args.url, args.location)
    ensure_dagster_home(project_home())
    instance = dg.DagsterInstance.get()
    new = add_as_of_dates(instance, spec, keys)
    print(
        f"{spec.name}: {len(keys)} as-of date(s) {keys[0]} .. {keys[-1]} "
        f"({len(new)} new) in partitions {as_of_partitions_name(spec)}"
    )
    if args.run:
        return _run_here(spec, keys, instance)
    print(
        f"launch them from the UI (job {spec.name}_daily_retrain, Materialize all…, select the "
        "dates) or run them here with --run"
    )
    return 0


def add_parser(sub: Any) -> None:
    """The ``backfill`` subcommand, on ``mlops``'s subparsers."""
    p = sub.add_parser("backfill", help="add past as-of dates of a dataset (and run them)")
    p.add_argument("--dataset", default="sales", help="a bundled spec's name or a YAML path")
    p.add_argument("--from", dest="start", required=True, help="first as-of date, YYYY-MM-DD")
    p.add_argument("--to", dest="end", help="last as-of date (default: --from)")
    p.add_argument("--every", help="pandas frequency of the dates, e.g. W-MON (default: daily)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--run", action="store_true", help="run each date here, in order")
    how.add_argument("--url", help="queue one run per date on this deployed Dagster webserver")
    p.add_argument("--location", default="mlops_assets", help="with --url: code location name")
    p.set_defaults(func=cmd_backfill)
