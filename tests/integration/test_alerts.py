"""Alerts reach a real HTTP receiver through dagster-msteams' own client: a failed run and a
failed blocking check, with the reason and a link to the run; no channel, nothing is sent."""

import dagster as dg
import pytest
from http_receiver import Receiver

from resources.alerts import UI_URL_ENV, WEBHOOK_ENV, NoAlerts, TeamsAlerts, alerts_from_env
from sensors.failures import ALERT_TAG, FAILURE_TAG, make_failure_sensor

pytestmark = pytest.mark.integration
UI = "http://dagster.example.test:3000"


@dg.asset(
    check_specs=[
        dg.AssetCheckSpec(
            "quarantine", asset="curated", blocking=True, description="quarantine share"
        )
    ]
)
def curated():
    yield dg.Output(1)
    yield dg.AssetCheckResult(
        check_name="quarantine",
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description="61% of the rows quarantined, over validation.max_quarantined_share",
        metadata={"reason": "bad_schema.csv: column price is text"},
    )


@dg.asset(deps=[curated])
def candidate_models():
    return 2


@dg.op
def explode():
    raise RuntimeError("curated data missing for 2026-11-17")


@dg.job
def failing():
    explode()


def _fail_and_sense(job_or_assets, alerts, instance):
    """Run the failing job (or assets), then the failure sensor on its failure event."""
    if isinstance(job_or_assets, list):
        result = dg.materialize(job_or_assets, instance=instance, raise_on_error=False)
        sensor = make_failure_sensor()
    else:
        result = job_or_assets.execute_in_process(instance=instance, raise_on_error=False)
        sensor = make_failure_sensor(jobs=[job_or_assets])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_run_failure)
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        dagster_event=failure,
        resources={"alerts": alerts},
    ).for_run_failure()
    sensor(context)
    return result.run_id, instance.get_run_by_id(result.run_id).tags


def test_a_failed_run_alerts_with_its_reason_and_a_link():
    with Receiver() as rx, dg.instance_for_test() as instance:
        alerts = TeamsAlerts(webhook_url=rx.url, ui_url=UI)
        run_id, tags = _fail_and_sense(failing, alerts, instance)
        assert len(rx.bodies) == 1
        text = rx.text()
        assert "curated data missing for 2026-11-17" in text
        assert f"{UI}/runs/{run_id}" in text and "failing" in text
        assert tags[FAILURE_TAG] == "true" and tags[ALERT_TAG] == "true"


def test_a_failed_blocking_check_alerts_with_its_description_and_reason():
    with Receiver() as rx, dg.instance_for_test() as instance:
        run_id, _ = _fail_and_sense(
            [curated, candidate_models], TeamsAlerts(webhook_url=rx.url, ui_url=UI), instance
        )
        text = rx.text()
        assert "check 'quarantine' on curated failed" in text
        assert "over validation.max_quarantined_share" in text
        assert "bad_schema.csv: column price is text" in text
        assert f"{UI}/runs/{run_id}" in text


def test_no_channel_sends_nothing_and_still_tags(monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    with Receiver() as rx, dg.instance_for_test() as instance:
        alerts = alerts_from_env()
        assert isinstance(alerts, NoAlerts)
        _, tags = _fail_and_sense(failing, alerts, instance)
        assert rx.bodies == [] and tags[FAILURE_TAG] == "true" and ALERT_TAG not in tags


def test_the_webhook_comes_from_the_environment_and_is_never_logged(monkeypatch, caplog):
    with Receiver(status=500) as rx, dg.instance_for_test() as instance:
        monkeypatch.setenv(WEBHOOK_ENV, rx.url)
        monkeypatch.setenv(UI_URL_ENV, UI)
        alerts = alerts_from_env()
        assert isinstance(alerts, TeamsAlerts)
        # An EnvVar: the code location's config names the variable, not the secret.
        assert isinstance(alerts.webhook_url, dg.EnvVar)
        run_id, tags = _fail_and_sense(failing, alerts, instance)
        assert len(rx.bodies) == 1 and tags[ALERT_TAG] == "false"  # the channel refused it
        assert "hook-secret-123" not in caplog.text
        for event in instance.all_logs(run_id):
            assert "hook-secret-123" not in (event.user_message or "")
