"""Where a browser opens a stored report: the storage's own URL, or a local HTTP server's."""

from __future__ import annotations

import os
import urllib.parse

from mlops_assets.storage import Storage

REPORTS_PREFIX = "reports"
# Set by `mlops dev` to the HTTP server it runs over the local storage's reports/ folder.
REPORTS_URL_ENV = "MLOPS_REPORTS_URL"


def report_url(storage: Storage, name: str) -> str:
    """The address of the stored report ``name`` (``reports/...``): under ``$MLOPS_REPORTS_URL``
    when that is set, else the storage's own URI (a Blob URL on Azure, ``file://`` locally)."""
    base = os.environ.get(REPORTS_URL_ENV, "").strip()
    prefix = f"{REPORTS_PREFIX}/"
    if base and name.startswith(prefix):
        return f"{base.rstrip('/')}/{urllib.parse.quote(name[len(prefix) :])}"
    return storage.uri(name)
