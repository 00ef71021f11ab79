"""Reports open from the UI: the explorer's link goes to `mlops dev`'s HTTP server when it runs."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from mlops_assets.cli_dev import serve_reports
from mlops_assets.reporting.links import REPORTS_URL_ENV, report_url
from mlops_assets.storage.local import LocalStorage

NAME = "reports/sales/series_explorer/2026-11-30.html"


def test_the_link_is_the_storage_uri_unless_reports_are_served(tmp_path, monkeypatch):
    storage = LocalStorage(str(tmp_path))
    monkeypatch.delenv(REPORTS_URL_ENV, raising=False)
    assert report_url(storage, NAME) == (tmp_path / NAME).resolve().as_uri()
    monkeypatch.setenv(REPORTS_URL_ENV, "http://127.0.0.1:3001/")
    assert report_url(storage, NAME) == (
        "http://127.0.0.1:3001/sales/series_explorer/2026-11-30.html"
    )
    # Only what lies under reports/ is served.
    assert report_url(storage, "models/x.json").startswith("file://")


def test_the_reports_server_serves_pages_read_only_and_nothing_outside(tmp_path, monkeypatch):
    storage = LocalStorage(str(tmp_path))
    storage.write_bytes(NAME, b"<html>explorer</html>")
    storage.write_bytes("models/secret.json", b"{}")
    server = serve_reports(tmp_path / "reports", "127.0.0.1", 0)
    try:
        monkeypatch.setenv(REPORTS_URL_ENV, f"http://127.0.0.1:{server.server_port}/")
        with urllib.request.urlopen(report_url(storage, NAME), timeout=5) as resp:
            assert resp.read() == b"<html>explorer</html>"
            assert resp.headers["Content-Type"] == "text/html"
        base = f"http://127.0.0.1:{server.server_port}"
        for path in ("/sales/", "/../models/secret.json", "/%2e%2e/models/secret.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=5)
            assert err.value.code == 404, path
        put = urllib.request.Request(f"{base}/sales/x.html", data=b"x", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(put, timeout=5)
        assert err.value.code == 501
    finally:
        server.shutdown()
