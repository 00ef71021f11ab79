"""The operator's path through the Dagster UI, in a real browser.

``mlops dev`` (``dg dev``: webserver + daemon, and the reports served over HTTP) serves the code
location from a fresh instance with a small landed sales dataset. Headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright) starts the daily sensor with one click: it adds
today's as-of date and launches the daily retrain. The test waits for that run to succeed and
reads the asset checks and the training metadata back from the asset pages. It checks that the
job's launch dialog offers exactly the one date that exists (not a calendar), follows the lineage
from the curated data through the candidates and the evaluation to the registered set and on to
the production set (promoted through ``sales_promote_to_prod``), QA, deployment and batch
predictions, and opens the per-series explorer over HTTP from its asset's ``explorer`` link,
searches a series and sees its chart. Screenshots go to ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("MLOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB = "sales_daily_retrain"
RUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(
        f"{base}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"]


def _stop(proc: subprocess.Popen) -> None:
    """``dg dev`` stops its webserver, daemon and code server on Ctrl-C; the process group
    is killed after a grace period so nothing outlives the test."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make tools` installs Debian's chromium")
    home = tmp_path_factory.mktemp("mlops_home")
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "MLOPS_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "MLOPS_PROFILE": "local",
        "MLOPS_RETRAIN_HOUR": "0",  # the daily sensor's run is due as soon as it is started
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    subprocess.run(
        [str(BIN / "mlops"), "generate", "sales", "--series", "20", "--periods", "120"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    log = (home / "dagster-dev.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlops"), "dev", "--port", str(port), "--reports-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A shell that started pytest in the background left SIGINT ignored; dg dev shuts
        # down cleanly on it, so give it back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("dg dev did not start:\n" + _tail(home / "dagster-dev.log"))
                time.sleep(0.5)
        _wait_for_code_location(base, deadline)
        # A fresh instance greets the first visit with a newsletter dialog; mark it seen.
        assert _graphql(base, "mutation { setNuxSeen }")["setNuxSeen"]
        yield base
    finally:
        _stop(proc)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(home / "dagster-dev.log", ARTIFACTS / "dagster-dev.log")


def _wait_for_code_location(base: str, deadline: float) -> None:
    query = """{ workspaceOrError { ... on Workspace { locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
    } } } }"""
    entries: list = []
    while time.monotonic() < deadline:
        entries = _graphql(base, query)["workspaceOrError"].get("locationEntries") or []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [
                e["locationOrLoadError"]["message"]
                for e in entries
                if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"
            ]
            assert not errors, "the code location failed to load:\n" + "\n".join(errors)
            return
        time.sleep(0.5)
    pytest.fail(f"the code location did not load: {entries}")


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:]


def _wait_for_run(base: str, run_id: str) -> str:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = _graphql(base, query, {"id": run_id})["runOrError"].get("status", status)
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(2)
    return status


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _daily_run(base: str, since: str, timeout_s: float = 120) -> tuple[str, str]:
    """The run the daily sensor launched (tag ``mlops/trigger: daily``), once there is one,
    and its as-of date: the sensor's today, which is ``since`` (the day the sensor was
    started) or a later day when midnight UTC passed meanwhile."""
    query = """{ runsOrError(filter: {tags: [{key: "mlops/trigger", value: "daily"}]}) {
        ... on Runs { results { runId jobName tags { key value } } } } }"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = _graphql(base, query)["runsOrError"]["results"]
        if runs:
            assert len(runs) == 1, runs
            tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
            as_of = tags["dagster/partition"]
            assert runs[0]["jobName"] == JOB and since <= as_of <= _today(), (since, runs)
            return runs[0]["runId"], as_of
        time.sleep(1)
    pytest.fail(f"the daily sensor launched no run within {timeout_s:.0f} s")


def _screenshot_asset_graph(page, base: str, path: Path) -> None:
    """The lineage graph with the sales ingestion and training stages opened up."""
    from playwright.sync_api import expect

    page.goto(f"{base}/asset-groups")
    graph = page.locator("foreignObject")
    stages = {
        "sales_ingestion": ["curated"],
        "sales_training": [
            "candidate_models",
            "evaluation",
            "registered_model_set",
            "series_explorer",
        ],
    }
    for group, assets in stages.items():
        title = graph.get_by_text(group, exact=True).first
        expect(title).to_be_visible()
        page.wait_for_timeout(500)  # the layout settles before a click lands on the right node
        title.click()
        for asset in assets:
            expect(graph.get_by_text(asset, exact=True).first).to_be_attached()
    zoom_out = page.get_by_role("button").filter(
        has=page.get_by_role("img", name="zoom_out", exact=True)
    )
    for _ in range(8 if zoom_out.count() == 1 else 0):  # 5% a step: both stages side by side
        zoom_out.click()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(path))


LINEAGE = ["curated", "candidate_models", "evaluation", "registered_model_set"]


def _upstream(base: str, path: list[str]) -> list[list[str]]:
    query = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
        ... on AssetNode { dependencyKeys { path } } } }"""
    node = _graphql(base, query, {"key": {"path": path}})["assetNodeOrError"]
    return [k["path"] for k in node["dependencyKeys"]]


def _screenshot_lineage(page, base: str, path: Path) -> None:
    """The registered set's upstream lineage: curated -> candidates -> evaluation -> registered."""
    from playwright.sync_api import expect

    for up, down in itertools.pairwise(LINEAGE):  # the edges, as the UI's graph reads them
        assert ["sales", up] in _upstream(base, ["sales", down]), (up, down)
    page.goto(
        f"{base}/assets/sales/registered_model_set?view=lineage&lineageScope=upstream"
        "&lineageDepth=5"
    )
    graph = page.locator("foreignObject")
    for asset in LINEAGE:
        expect(graph.get_by_text(asset, exact=True).first).to_be_visible()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(path))


PRODUCTION = [
    ("registered_model_set", "production_model_set"),
    ("production_model_set", "qa"),
    ("qa", "deployment"),
    ("production_model_set", "deployment"),
    ("production_model_set", "batch_predictions"),
]


def _launch_job(base: str, job: str) -> str:
    """Launch ``job`` (unpartitioned) as the Launchpad does; its run id."""
    query = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    selector = {"repositoryLocationName": "mlops_assets", "repositoryName": "__repository__"}
    answer = _graphql(base, query, {"params": {"selector": {**selector, "jobName": job}}})
    assert answer["launchRun"]["__typename"] == "LaunchRunSuccess", answer
    return answer["launchRun"]["run"]["runId"]


def _screenshot_path_to_production(page, base: str, path: Path) -> None:
    """registered set -> production set -> QA, deployment and batch predictions: the edges as
    the UI's graph reads them, and the production set's lineage drawn both ways."""
    from playwright.sync_api import expect

    nodes = _graphql(base, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")
    parents = {
        tuple(n["assetKey"]["path"]): [k["path"] for k in n["dependencyKeys"]]
        for n in nodes["assetNodes"]
    }
    for up, down in PRODUCTION:
        assert ["sales", up] in parents[("sales", down)], (up, down)
    run_id = _launch_job(base, "sales_promote_to_prod")
    assert _wait_for_run(base, run_id) == "SUCCESS", f"sales_promote_to_prod run {run_id}"
    page.goto(
        f"{base}/assets/sales/production_model_set?view=lineage&lineageScope=neighbors"
        "&lineageDepth=2"
    )
    graph = page.locator("foreignObject")
    for asset in {a for edge in PRODUCTION for a in edge}:
        expect(graph.get_by_text(asset, exact=True).first).to_be_visible()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(path))
    page.goto(f"{base}/assets/sales/production_model_set")
    for key in ("prod_version", "dev_version", "models_verified"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible()


def _only_the_added_dates_are_partitions(page, base: str, as_of: str, path: Path) -> None:
    """Each as-of asset has exactly the dates that were added (here one), not a calendar."""
    from playwright.sync_api import expect

    query = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
        ... on AssetNode { partitionKeys } } }"""
    for name in ("curated", "candidate_models", "registered_model_set"):
        node = _graphql(base, query, {"key": {"path": ["sales", name]}})["assetNodeOrError"]
        assert node["partitionKeys"] == [as_of], name
    page.goto(f"{base}/assets/sales/curated?view=partitions")
    expect(page.get_by_text(as_of, exact=True).first).to_be_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))


def _the_launch_dialog_offers_the_added_date(page, base: str, as_of: str) -> None:
    """A run for another date: the job's launch dialog, whose "All" is the one added date."""
    from playwright.sync_api import expect

    page.goto(f"{base}/locations/mlops_assets/jobs/{JOB}")
    # The job's graph shows its assets grouped by stage.
    expect(page.get_by_text("sales_ingestion", exact=True).first).to_be_visible()
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    dialog.get_by_role("button", name="All", exact=True).click()
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    expect(dialog.get_by_text(as_of, exact=True).first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "ui-launch-dialog.png"))
    page.keyboard.press("Escape")


def _open_the_explorer(page, base: str, as_of: str) -> None:
    """From the explorer asset's page, follow its ``explorer`` link; search one series."""
    from playwright.sync_api import expect

    page.goto(f"{base}/assets/sales/series_explorer")
    expect(page.get_by_text("explorer_preview", exact=True).first).to_be_visible()
    link = page.locator('a[href*="series_explorer/"]').first
    expect(link).to_be_attached()
    page.screenshot(path=str(ARTIFACTS / "ui-explorer-asset.png"))
    # `mlops dev` serves the reports over HTTP, so the link opens from the UI's page.
    href = link.get_attribute("href") or ""
    assert href.startswith("http://127.0.0.1:") and href.endswith(f"/{as_of}.html"), href
    page.goto(href)
    series = "store=S0000/product=P012"
    page.locator("#search").fill("s0000 p012")
    expect(page.locator("#count")).to_have_text("1 of 20 series")
    expect(page.locator("#series-title")).to_have_text(series)
    # The address names the series: a link to it opens it.
    assert page.evaluate("location.hash") == "#series=" + urllib.parse.quote(series, safe="")
    chart = page.locator("#chart")
    expect(chart.locator("path.actual")).to_be_attached()
    expect(chart.locator("path.forecast")).to_have_count(4)  # one per backtest origin
    expect(chart.locator("polygon.band")).to_have_count(2)  # the 80% and 95% intervals
    expect(page.get_by_text("champion gate")).to_be_visible()
    expect(page.get_by_text("no_champion").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "ui-explorer.png"), full_page=True)


def test_launch_the_daily_retrain_from_the_ui_and_read_its_checks(dagster_ui):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            # One click: starting the daily sensor adds today's date and launches its run.
            page.goto(f"{dagster_ui}/locations/mlops_assets/sensors/{JOB}_sensor")
            expect(page.get_by_text(f"Runs {JOB} every day").first).to_be_visible()
            switch = page.locator("input[type=checkbox]").first
            expect(switch).not_to_be_checked()
            since = _today()
            switch.locator("xpath=..").click()  # the switch's label; its input is hidden
            expect(switch).to_be_checked()
            page.screenshot(path=str(ARTIFACTS / "ui-daily-sensor.png"))
            run_id, as_of = _daily_run(dagster_ui, since)

            status = _wait_for_run(dagster_ui, run_id)
            page.goto(f"{dagster_ui}/runs/{run_id}")
            if status != "SUCCESS":
                page.wait_for_timeout(5000)
                page.screenshot(path=str(ARTIFACTS / "ui-run.png"))
                pytest.fail(f"run {run_id} ended {status}; see test-artifacts/ui-run.png")
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            expect(page.get_by_text("sales__registered_model_set").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "ui-run.png"))

            page.goto(f"{dagster_ui}/assets/sales/curated?view=checks")
            for check in ("schema", "keys", "values", "freshness", "distribution"):
                expect(page.get_by_text(check, exact=True).first).to_be_visible()
            # The warn-only calendar_gaps check may be the one shown first: open a blocking one.
            page.get_by_text("schema", exact=True).first.click()
            expect(page.get_by_text("This is a blocking asset check.")).to_be_visible()
            expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
            expect(page.get_by_text("rows_checked").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "ui-checks.png"))

            page.goto(f"{dagster_ui}/assets/sales/candidate_models")
            for key in ("series_total", "series_trained"):
                expect(page.get_by_text(key, exact=True).first).to_be_visible()
            expect(
                page.get_by_text("each series keeps the candidate family", exact=False)
            ).to_be_visible()

            _the_launch_dialog_offers_the_added_date(page, dagster_ui, as_of)
            _screenshot_asset_graph(page, dagster_ui, ARTIFACTS / "ui-asset-graph.png")
            _screenshot_lineage(page, dagster_ui, ARTIFACTS / "ui-lineage.png")
            _only_the_added_dates_are_partitions(
                page, dagster_ui, as_of, ARTIFACTS / "ui-as-of-partitions.png"
            )
            _screenshot_path_to_production(
                page, dagster_ui, ARTIFACTS / "ui-lineage-production.png"
            )
            _open_the_explorer(page, dagster_ui, as_of)
        finally:
            browser.close()
