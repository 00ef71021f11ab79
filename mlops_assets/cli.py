"""The ``mlops`` command: sample data, the demo, and helpers around the code location."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_assets.cli_backfill import add_parser as add_backfill_parser
from mlops_assets.cli_dev import add_parser as add_dev_parser
from mlops_assets.cli_remote import add_parsers as add_remote_parsers
from mlops_assets.domain.batch_layout import inbox_prefix
from mlops_assets.domain.curation import landing_prefix
from mlops_assets.domain.sample_drops import (
    choose_series,
    land_bad,
    land_diabetes,
    land_files,
    land_sales,
    land_table,
    read_spec_table,
)
from mlops_assets.logging_setup import silence_third_party_warnings
from mlops_assets.ml.sample_data import BAD_KINDS, SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.profiles import (
    current_profile,
    project_home,
    storage_for,
)
from mlops_assets.storage import Storage

if TYPE_CHECKING:
    from mlops_assets.serving.service import ServingSettings


def _storage() -> Storage:
    return storage_for(current_profile(), project_home()).process_config_and_initialize()


def cmd_generate(args: argparse.Namespace) -> int:
    spec = load_spec(args.dataset)
    storage = _storage()
    t0 = time.perf_counter()
    if spec.name == "diabetes":
        landed = land_diabetes(storage, spec, args.drops, args.format)
    else:
        shape = SalesShape(args.series, args.periods, args.seed, realistic=args.realistic)
        landed = land_sales(storage, spec, shape, args.drops, args.format, progress=True)
    for kind in args.bad:
        good = sales_table(SalesShape(min(args.series, 5), 60, args.seed))
        landed.append(land_bad(storage, spec, good, kind))
    took = time.perf_counter() - t0
    for b in landed:
        print(f"  {storage.uri(b.name)}  ({b.size:,} bytes)")
    print(f"landed {len(landed)} drop(s) for {spec.name!r} in {took:.1f}s")
    return 0


def _land_table(storage, spec, args: argparse.Namespace) -> int:
    """``mlops land --file``: a table split into a history drop, then one drop per period."""
    try:
        table = read_spec_table(args.file, spec)
        if args.series:
            table = choose_series(table, spec, args.series)
        landed = land_table(storage, spec, table, args.drops, args.format)
    except (OSError, ValueError) as exc:
        print(f"mlops land: {exc}", file=sys.stderr)
        return 2
    print(
        f"landed {len(landed)} drop(s), {table.num_rows:,} rows, under landing/{spec.name}/ "
        f"({landed[0].name} .. {landed[-1].name})"
    )
    return 0


def cmd_land(args: argparse.Namespace) -> int:
    """Land files as drops, each in one atomic write (the sensor never sees half a file).

    ``--file F``: F is a Parquet table of the spec's columns, split into a history drop and one
    drop per period under ``landing/<ds>/``. ``FILE...``: each file landed as it is, in the
    scoring inbox (or ``--to landing``).
    """
    spec = load_spec(args.dataset)
    storage = _storage()
    if args.file:
        return _land_table(storage, spec, args)
    if not args.files:
        print("mlops land: name files to land, or --file with --drops", file=sys.stderr)
        return 2
    base = inbox_prefix(spec.name) if args.to == "inbox" else landing_prefix(spec)
    under = args.under.strip("/")
    try:
        landed = land_files(storage, f"{base}{under}/" if under else base, args.files)
    except FileNotFoundError as exc:
        print(f"mlops land: {exc}", file=sys.stderr)
        return 2
    for b in landed:
        print(f"  {storage.uri(b.name)}  ({b.size:,} bytes, etag {b.etag})")
    print(f"landed {len(landed)} drop(s) for {spec.name!r} in {args.to}")
    return 0


def _mlops_command() -> str:
    """How to run this command again: the script next to this Python, relative to the working
    directory where it lies under it (``.venv/bin/mlops``), else ``mlops``."""
    script = Path(sys.executable).parent / "mlops"
    if not script.exists():
        return "mlops"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def cmd_demo(args: argparse.Namespace) -> int:
    from mlops_assets.demo_run import DemoSettings, run_demo

    settings = DemoSettings(args.series, args.periods, args.as_of, _mlops_command())
    return run_demo(settings, say=print, err=lambda line: print(line, file=sys.stderr))


def cmd_demo_azure(args: argparse.Namespace) -> int:
    from mlops_assets.demo_azure import AzureDemoSettings, run_demo_azure

    settings = AzureDemoSettings(args.series, args.periods, args.as_of)
    return run_demo_azure(settings, say=print, err=lambda line: print(line, file=sys.stderr))


def serve_settings(args: argparse.Namespace, home: Path) -> ServingSettings:
    """What ``mlops serve`` serves: ``--dataset`` is a bundled spec's name or a spec YAML's
    path, and the spec travels to the server as JSON either way.

    Raises:
        FileNotFoundError: ``--dataset`` is neither.
    """
    from mlops_assets.profiles import registries_for
    from mlops_assets.serving.service import ServingSettings

    spec = load_spec(args.dataset)
    root = args.root or str(home / "prod-storage")
    _, prod_registry = registries_for("local", home)
    keys = [k for k in (os.environ.get(args.api_key_env) or "").split(",") if k]
    return ServingSettings.for_spec(
        spec,
        source=args.source,
        root=root,
        alias=args.alias,
        registry_uri=prod_registry.tracking_uri,
        api_keys=keys,
        poll_s=args.poll_s,
        cache_models=args.cache_models,
        collect_rate=args.collect_rate,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """The AML entry script under azmlinfsrv on 127.0.0.1, following the prod alias."""
    import signal

    from mlops_assets.serving.local import LocalServer

    try:
        settings = serve_settings(args, project_home())
    except FileNotFoundError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 2
    keys = settings.api_keys

    def _terminate(signum, frame):  # SIGTERM stops the server too, like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    server = LocalServer(
        settings,
        port=args.port,
        workers=args.workers,
        worker_timeout_s=args.worker_timeout,
        log_path=args.log,
    )
    print(f"starting azmlinfsrv for {settings.dataset} ({args.source}) on {server.url} ...")
    try:
        try:
            info = server.start(timeout=120).info()
        except (RuntimeError, TimeoutError) as exc:
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"serving {info['dataset']} model set v{info['model_set_version']} "
            f"({info['series']} series) from {info['source']}\n"
            f"  POST {server.url}/score   GET {server.url}/ (liveness)   "
            f"GET {server.url}/score (info)\n"
            f"  API key: {'required (' + args.api_key_env + ')' if keys else 'off'}; "
            f"new {args.alias} versions are picked up every {args.poll_s}s. Ctrl-C stops."
        )
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


AZURE_SETTINGS = (
    ("subscription", "MLOPS_AML_SUBSCRIPTION_ID"),
    ("resource_group", "MLOPS_AML_RESOURCE_GROUP"),
    ("workspace", "MLOPS_AML_WORKSPACE"),
)
COMPUTE_SETTINGS = ("MLOPS_AML_BATCH_COMPUTE", "MLOPS_AML_TRAIN_COMPUTE")


def check_azure(ml_client, workspace: str, computes: list[str]) -> list[str]:
    """Problems that would make a submitted job fail: the workspace, and each compute, must
    exist and be provisioned. ``ml_client`` is an ``azure.ai.ml.MLClient`` (or a stand-in)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    problems = []
    try:
        ws = ml_client.workspaces.get(workspace)
        print(f"  workspace {ws.name}: {ws.location}, mlflow {ws.mlflow_tracking_uri}")
    except (ResourceNotFoundError, HttpResponseError) as exc:
        return [f"workspace {workspace!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}"]
    for name in computes:
        try:
            compute = ml_client.compute.get(name)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            problems.append(f"compute {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        state = getattr(compute, "provisioning_state", None)
        size = getattr(compute, "size", None)
        nodes = (
            f"{getattr(compute, 'min_instances', '?')}..{getattr(compute, 'max_instances', '?')}"
        )
        print(f"  compute {name}: {compute.type}, {size}, nodes {nodes}, {state}")
        if state and str(state).lower() != "succeeded":
            problems.append(f"compute {name!r} is {state}, not Succeeded")
    return problems


def cmd_check_azure(args: argparse.Namespace) -> int:
    """Check the configured AML workspace and its compute exist before anything is submitted."""
    settings = {key: getattr(args, key) or os.environ.get(env, "") for key, env in AZURE_SETTINGS}
    computes = args.compute or [os.environ[e] for e in COMPUTE_SETTINGS if os.environ.get(e)]
    missing = [env for key, env in AZURE_SETTINGS if not settings[key]]
    target = (
        f"/subscriptions/{settings['subscription'] or '<MLOPS_AML_SUBSCRIPTION_ID>'}"
        f"/resourceGroups/{settings['resource_group'] or '<MLOPS_AML_RESOURCE_GROUP>'}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/"
        f"{settings['workspace'] or '<MLOPS_AML_WORKSPACE>'}"
    )
    if args.dry_run:
        print(
            "dry run: no credential is requested and nothing is called.\n"
            "would sign in with DefaultAzureCredential (managed identity, workload identity "
            "or `az login`), then:\n"
            f"  GET workspace {target}"
        )
        for name in computes or ["<MLOPS_AML_BATCH_COMPUTE>"]:
            print(f"  GET compute {name} in that workspace; require provisioning_state Succeeded")
        if missing:
            print(f"not set: {', '.join(missing)}")
        return 0
    if missing:
        print(f"set {', '.join(missing)} (or pass them as options)", file=sys.stderr)
        return 2
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    print(f"checking {target} ...")
    client = MLClient(
        DefaultAzureCredential(),
        settings["subscription"],
        settings["resource_group"],
        settings["workspace"],
    )
    problems = check_azure(client, settings["workspace"], computes)
    for p in problems:
        print(f"  PROBLEM: {p}", file=sys.stderr)
    print("ready to submit" if not problems else f"{len(problems)} problem(s); nothing submitted")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the full stack trace"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="land sample drops for a bundled dataset")
    gen.add_argument("dataset", choices=["sales", "diabetes"])
    gen.add_argument("--series", type=int, default=100)
    gen.add_argument("--periods", type=int, default=156)
    gen.add_argument("--drops", type=int, default=1, help="a history drop, then one per period")
    gen.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--realistic",
        action="store_true",
        help="sales: ragged start and end dates, missing weeks, intermittent slow movers",
    )
    gen.add_argument("--bad", action="append", default=[], choices=BAD_KINDS, metavar="KIND")
    gen.set_defaults(func=cmd_generate)

    land = sub.add_parser("land", help="land files as drops, atomically")
    land.add_argument("files", nargs="*", type=Path, help="files landed as they are")
    land.add_argument("--dataset", default="sales", help="a bundled spec's name or a YAML path")
    land.add_argument("--to", choices=["inbox", "landing"], default="inbox")
    land.add_argument("--under", default="", help="a subfolder, e.g. 2026/11/21")
    land.add_argument("--file", help="a Parquet table of the spec's columns, split into drops")
    land.add_argument("--drops", type=int, default=1, help="with --file: history, then 1/period")
    land.add_argument("--series", type=int, default=0, help="with --file: this many series")
    land.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    land.set_defaults(func=cmd_land)

    demo = sub.add_parser("demo", help="generate a small dataset and run the daily jobs")
    demo.add_argument("--series", type=int, default=50)
    demo.add_argument("--periods", type=int, default=156)
    demo.add_argument("--as-of", help="partition (YYYY-MM-DD); default today, UTC")
    demo.set_defaults(func=cmd_demo)
    azure_demo = sub.add_parser(
        "demo-azure",
        help="the sales chain on the local Azure ML emulation (Azurite; no Azure account)",
    )
    azure_demo.add_argument("--series", type=int, default=12)
    azure_demo.add_argument("--periods", type=int, default=104)
    azure_demo.add_argument("--as-of", help="partition (YYYY-MM-DD); default today, UTC")
    azure_demo.set_defaults(func=cmd_demo_azure)
    add_backfill_parser(sub)

    serve = sub.add_parser("serve", help="serve the production model set on a local endpoint")
    serve.add_argument(
        "--dataset", default="sales", help="a bundled spec's name or a spec YAML's path"
    )
    serve.add_argument("--port", type=int, default=5001)
    serve.add_argument(
        "--workers", type=int, help="gunicorn workers (WORKER_COUNT); default 2-4 by CPUs"
    )
    serve.add_argument(
        "--worker-timeout",
        type=int,
        default=30,
        help="seconds a worker may spend on one connection before it is replaced (WORKER_TIMEOUT)",
    )
    serve.add_argument("--alias", default="production")
    serve.add_argument(
        "--source", default="auto", choices=["auto", "pointer", "registry", "model_dir"]
    )
    serve.add_argument("--root", help="storage root of the model sets; default prod storage")
    serve.add_argument("--api-key-env", default="MLOPS_SERVING_API_KEY", metavar="VAR")
    serve.add_argument("--poll-s", type=float, default=2.0)
    serve.add_argument("--cache-models", type=int, default=2000)
    serve.add_argument("--collect-rate", type=float, default=0.0)
    serve.add_argument("--log", help="server log file (default: none)")
    serve.set_defaults(func=cmd_serve)

    azure = sub.add_parser(
        "check-azure", help="check the AML workspace and compute exist before submitting"
    )
    azure.add_argument("--subscription", help="default: MLOPS_AML_SUBSCRIPTION_ID")
    azure.add_argument("--resource-group", help="default: MLOPS_AML_RESOURCE_GROUP")
    azure.add_argument("--workspace", help="default: MLOPS_AML_WORKSPACE")
    azure.add_argument(
        "--compute",
        action="append",
        help="compute name (repeatable); default MLOPS_AML_BATCH_COMPUTE, MLOPS_AML_TRAIN_COMPUTE",
    )
    azure.add_argument("--dry-run", action="store_true", help="print what it would check")
    azure.set_defaults(func=cmd_check_azure)
    add_remote_parsers(sub)
    add_dev_parser(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error is one line (what failed and why) and exit status 1, with
    the stack trace only under ``--debug``."""
    args = build_parser().parse_args(argv)
    silence_third_party_warnings()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"mlops {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  (run `mlops --debug ...` for the stack trace)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
