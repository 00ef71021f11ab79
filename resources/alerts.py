"""Where alerts go: a Microsoft Teams channel through ``dagster-msteams``, or nowhere.

The webhook URL (a Teams incoming webhook or a Power Automate workflow URL) is a secret: the
code location reads it from ``MLOPS_TEAMS_WEBHOOK_URL`` as a Dagster ``EnvVar`` and never logs
it (a failed post is logged by exception type only, since a requests error names the URL).
Without it, ``NoAlerts`` sends nothing. ``MLOPS_DAGSTER_UI_URL`` (e.g. the webserver's public
address) turns run ids into links.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg
from dagster_msteams import MSTeamsResource
from dagster_msteams.adaptive_card import AdaptiveCard
from dagster_msteams.card import Card

WEBHOOK_ENV = "MLOPS_TEAMS_WEBHOOK_URL"
UI_URL_ENV = "MLOPS_DAGSTER_UI_URL"
log = logging.getLogger("mlops.alerts")


@dataclass(frozen=True)
class Alert:
    """One message: a title, facts (job, run, partition...), reasons and a link to the run."""

    title: str
    facts: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    link: str | None = None

    def text(self) -> str:
        """The message as Markdown-ish text, the way Teams cards render ``text``."""
        lines = [f"**{self.title}**"]
        lines += [f"- {k}: {v}" for k, v in self.facts.items() if v]
        lines += [f"- {r}" for r in self.reasons]
        if self.link:
            lines.append(f"[Open the run in Dagster]({self.link})")
        return "\n\n".join(lines)


def run_link(ui_url: str, run_id: str) -> str | None:
    """The run's page in the Dagster UI at ``ui_url``, or None without a UI address."""
    return f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None


class AlertChannel(dg.ConfigurableResource):
    """What sensors take as ``alerts``; this base sends nothing."""

    ui_url: str = ""

    @property
    def configured(self) -> bool:
        return False

    def link(self, run_id: str) -> str | None:
        return run_link(self.ui_url, run_id)

    def send(self, alert: Alert) -> bool:
        """Sends nothing; False."""
        return False


class NoAlerts(AlertChannel):
    """No channel configured: nothing is sent (failed runs still get their tags)."""


class TeamsAlerts(AlertChannel):
    """Posts each alert as a card to a Teams channel with ``dagster_msteams``' client."""

    webhook_url: str
    timeout_s: float = 10.0

    @property
    def configured(self) -> bool:
        return True

    def send(self, alert: Alert) -> bool:
        """Post ``alert``; True if Teams took it, False (logged, URL left out) if not."""
        client = MSTeamsResource(hook_url=self.webhook_url, timeout=self.timeout_s).get_client()
        card = Card() if client.is_legacy_webhook() else AdaptiveCard()
        card.add_attachment(text_message=alert.text())
        try:
            return bool(client.post_message(card.payload))
        except Exception as exc:  # a channel down must not fail the sensor that reports
            log.error("alert %r was not delivered: %s", alert.title, type(exc).__name__)
            return False


def alerts_from_env(environ: Mapping[str, str] | None = None) -> AlertChannel:
    """``TeamsAlerts`` when ``MLOPS_TEAMS_WEBHOOK_URL`` is set (read as an EnvVar, so the URL
    is not in the code location's config), else ``NoAlerts``."""
    env = os.environ if environ is None else environ
    ui_url = env.get(UI_URL_ENV, "")
    if env.get(WEBHOOK_ENV):
        return TeamsAlerts(webhook_url=dg.EnvVar(WEBHOOK_ENV), ui_url=ui_url)
    return NoAlerts(ui_url=ui_url)
