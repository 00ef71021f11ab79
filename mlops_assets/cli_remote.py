"""``mlops launch`` and ``mlops reload-location``: runs on a deployed instance (CD's path).

The address and authentication come from the environment, so a workflow sets them once:
``MLOPS_DAGSTER_UI_URL`` (the webserver) and ``MLOPS_DAGSTER_TOKEN_SCOPE`` (the Entra ID scope
of its Container Apps authentication; unset for an instance without it).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mlops_assets.remote_runs import Deployment


def _deployment(args: argparse.Namespace) -> Deployment:
    url = args.url or os.environ.get("MLOPS_DAGSTER_UI_URL")
    if not url:
        raise ValueError("no Dagster webserver given: pass --url or set MLOPS_DAGSTER_UI_URL")
    scope = args.token_scope or os.environ.get("MLOPS_DAGSTER_TOKEN_SCOPE") or None
    return Deployment(url=url, location=args.location, token_scope=scope)


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag {pair!r} is not KEY=VALUE")
        tags[key] = value
    return tags


def cmd_launch(args: argparse.Namespace) -> int:
    deployment = _deployment(args)
    if args.reload:
        deployment.reload_location()
        print(f"reloaded code location {deployment.location!r}")
    run_id = deployment.launch(args.job, partition=args.partition, tags=_tags(args.tag))
    print(
        f"launched {args.job}{f' [{args.partition}]' if args.partition else ''}: "
        f"{deployment.run_url(run_id)}"
    )
    if args.no_wait:
        return 0
    status = deployment.wait(
        run_id,
        timeout_s=args.timeout,
        poll_s=args.poll,
        on_status=lambda s: print(f"  {s.value}", flush=True),
    )
    print(f"run {run_id} {status.value}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    deployment = _deployment(args)
    deployment.reload_location()
    print(f"reloaded code location {deployment.location!r} on {deployment.url}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the Dagster webserver; default MLOPS_DAGSTER_UI_URL")
    parser.add_argument(
        "--token-scope", help="Entra ID scope of the webserver's auth; MLOPS_DAGSTER_TOKEN_SCOPE"
    )
    parser.add_argument("--location", default="mlops_assets", help="code location name")


def add_parsers(sub: Any) -> None:
    """The two subcommands, on ``mlops``'s subparsers."""
    launch = sub.add_parser(
        "launch", help="launch a job on a deployed instance (its queue and run launcher)"
    )
    launch.add_argument("job")
    launch.add_argument("--partition", help="e.g. the as-of date of a daily job")
    launch.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    launch.add_argument("--reload", action="store_true", help="reload the code location first")
    launch.add_argument("--no-wait", action="store_true", help="return once queued")
    launch.add_argument("--timeout", type=float, default=7200, help="seconds to wait for it")
    launch.add_argument("--poll", type=float, default=10, help="seconds between status checks")
    _common(launch)
    launch.set_defaults(func=cmd_launch)

    reload = sub.add_parser("reload-location", help="reload the code location on a deployment")
    _common(reload)
    reload.set_defaults(func=cmd_reload)
