"""The CD client's address handling and its bearer token (no deployment needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests

from mlops_assets.cli_remote import _tags
from mlops_assets.remote_runs import Deployment, _BearerAuth


def test_the_webserver_url_gives_scheme_host_port_and_path_prefix():
    client = Deployment("https://dagster.example.net:8443/prod/").client()
    assert client._url == "https://dagster.example.net:8443/prod/graphql"  # noqa: SLF001
    client = Deployment("http://127.0.0.1:3000").client()
    assert client._url == "http://127.0.0.1:3000/graphql"  # noqa: SLF001
    assert Deployment("http://h:1/").run_url("abc") == "http://h:1/runs/abc"


@pytest.mark.parametrize("url", ["dagster.example.net", "ftp://h", ""])
def test_an_address_that_is_not_http_says_what_to_set(url):
    with pytest.raises(ValueError, match="MLOPS_DAGSTER_UI_URL"):
        Deployment(url).client()


class _Credential:
    """Azure's TokenCredential protocol: a new token on every call, as after a renewal."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_token(self, *scopes: str, **_: object) -> SimpleNamespace:
        self.calls.append(scopes[0])
        return SimpleNamespace(token=f"t{len(self.calls)}", expires_on=0)


def test_every_request_asks_the_credential_for_its_token():
    cred = _Credential()
    auth = _BearerAuth(cred, "api://dagster/.default")
    for expected in ("Bearer t1", "Bearer t2"):
        req = requests.Request("POST", "https://h/graphql", auth=auth).prepare()
        assert req.headers["Authorization"] == expected
    assert cred.calls == ["api://dagster/.default"] * 2


def test_tags_are_key_value_pairs():
    assert _tags(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _tags(["novalue"])
