"""``mlops demo``: land sample data, run each bundled dataset's daily retrain and promotion in
this process, and end with what they produced.

The screen gets one line per step as it finishes and the result table
(``domain.demo_result``); Dagster's own events and the libraries' log lines go to
``$MLOPS_HOME/demo/dagster.log``. Each demo keeps its results in ``$MLOPS_HOME/demo/result.json``,
so the next one says what changed (its evaluation compares against these champions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from mlops_assets.assets.registration import promote_job_name
from mlops_assets.definitions import daily_job_name, defs
from mlops_assets.domain.curation import landing_prefix
from mlops_assets.domain.demo_result import (
    changes,
    dataset_result,
    dump_results,
    load_results,
    result_table,
)
from mlops_assets.domain.sample_drops import land_diabetes, land_sales
from mlops_assets.logging_setup import file_logger, log_to_file
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.partitions import add_as_of_dates
from mlops_assets.profiles import (
    current_profile,
    ensure_dagster_home,
    project_home,
    registries_for,
    storage_for,
)
from mlops_assets.run_report import explain_failure
from mlops_assets.storage import Storage

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """What ``mlops demo`` generates and runs.

    Args:
        series: Sales series generated on a first demo.
        periods: Weeks of history per series.
        as_of: The daily jobs' partition (YYYY-MM-DD); None: today, UTC.
        mlops: How the user runs the ``mlops`` command, for the next steps shown.
    """

    series: int = 50
    periods: int = 156
    as_of: str | None = None
    mlops: str = "mlops"


def demo_folder(home: Path) -> Path:
    """The demo's log and last results, under the project home."""
    return home / "demo"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _land(storage: Storage, settings: DemoSettings, say: Say) -> None:
    sales, diabetes = load_spec("sales"), load_spec("diabetes")
    landed = []
    if not storage.list(landing_prefix(sales)):
        shape = SalesShape(settings.series, settings.periods, seed=0)
        n = len(land_sales(storage, sales, shape, n_drops=2))
        landed.append(f"sales {settings.series} series x {settings.periods} weeks ({n} drops)")
    if not storage.list(landing_prefix(diabetes)):
        n = len(land_diabetes(storage, diabetes, n_drops=2))
        landed.append(f"diabetes ({n} drops)")
    say(f"landed {', '.join(landed)}" if landed else "sample data already landed: reusing it")


def _step_label(spec: DatasetSpec, op_name: str) -> str:
    """An asset step's name without its dataset prefix (every demo step is an asset's)."""
    return op_name.removeprefix(f"{spec.name}__").replace("__", "/")


def run_with_progress(
    job: dg.JobDefinition,
    spec: DatasetSpec,
    log: dg.LoggerDefinition,
    say: Say,
    **kwargs,
) -> dg.ExecuteInProcessResult:
    """Execute ``job`` in process with ``log`` as its only logger; a line per finished step.

    ``kwargs`` go to ``execute_in_process`` (a ``run_config`` gets the logger's added)."""
    last = [time.perf_counter()]

    def report(op_name: str, state: str) -> None:
        now = time.perf_counter()
        say(f"  {_step_label(spec, op_name):<22} {state} {now - last[0]:5.1f}s")
        last[0] = now

    @dg.success_hook(name="demo_progress_done")
    def done(context: dg.HookContext) -> None:
        report(context.op.name, "done  ")

    @dg.failure_hook(name="demo_progress_failed")
    def failed(context: dg.HookContext) -> None:
        report(context.op.name, "FAILED")

    job = job.with_logger_defs({"file": log}).with_hooks({done, failed})
    return job.execute_in_process(
        run_config={**kwargs.pop("run_config", {}), "loggers": {"file": {}}},
        raise_on_error=False,
        **kwargs,
    )


def _next_steps(settings: DemoSettings, home: Path) -> list[str]:
    drops = _shown(home / "storage" / landing_prefix(load_spec("sales"))) + "/week_*.parquet"
    cmds = [
        ("make dev", "the Dagster UI, http://127.0.0.1:3000"),
        (
            f"{settings.mlops} serve --dataset sales",
            "real-time scoring, http://127.0.0.1:5001/score",
        ),
        (f"{settings.mlops} land {drops}", "batch-score a drop (its sensor runs under make dev)"),
    ]
    width = min(max(len(c) for c, _ in cmds), 40)
    return ["next:", *(f"  {c:<{width}}  # {what}" for c, what in cmds)]


def run_demo(settings: DemoSettings, say: Say, err: Say) -> int:
    """Land sample data (on a first demo), run the daily retrain and the promotion of each
    bundled dataset, then show the result table; 1 if a run failed (``err`` says why)."""
    home = project_home()
    ensure_dagster_home(home)
    profile = current_profile()
    storage = storage_for(profile, home).process_config_and_initialize()
    folder = demo_folder(home)
    log_path = folder / "dagster.log"
    say(f"mlops demo in {_shown(home)}; Dagster's events go to {_shown(log_path)}")
    _land(storage, settings, say)
    partition = settings.as_of or datetime.now(UTC).strftime("%Y-%m-%d")
    definitions, instance = defs(), dg.DagsterInstance.get()
    specs = [load_spec("sales"), load_spec("diabetes")]
    for spec in specs:  # the UI's as-of axis then shows the demo's date
        add_as_of_dates(instance, spec, [partition])
    failed = []
    with log_to_file(log_path) as handler:
        log = file_logger(handler)
        for spec in specs:
            say(f"{spec.name}: daily retrain for {partition}, then promotion")
            for name, kwargs in (
                (daily_job_name(spec), {"partition_key": partition}),
                (promote_job_name(spec), {}),
            ):
                job = definitions.resolve_job_def(name)
                result = run_with_progress(job, spec, log, say, instance=instance, **kwargs)
                if not result.success:
                    err(f"{name} failed (run {result.run_id}):")
                    for line in explain_failure(result):
                        err(f"  {line}")
                    failed.append(name)
                    break
    if failed:
        err(f"{len(failed)} run(s) failed; Dagster's events are in {_shown(log_path)}")
        return 1
    registry, prod_registry = registries_for(profile, home)
    results = [dataset_result(s, storage, registry, prod_registry) for s in specs]
    saved = folder / "result.json"
    previous = load_results(saved.read_text()) if saved.exists() else {}
    say("")
    for line in result_table(results):
        say(line)
    moved = changes(previous, results)
    if moved:
        say("since the last demo:")
        for line in moved:
            say(f"  {line}")
    saved.write_text(dump_results(results))
    for line in _next_steps(settings, home):
        say(line)
    return 0
