"""The HTTP port's index (`GET /`): JSON for scripts and curl, HTML for a browser, listing what this server
serves, and every GET it links to answers."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from rollout_models import ctr_repository

from adrank import __version__
from adrank.server.index_page import index_reply
from served import ServerThread


def get(url: str, accept: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


@pytest.fixture(scope="module")
def http(tmp_path_factory) -> Iterator[str]:
    server = ServerThread(ctr_repository(tmp_path_factory.mktemp("repo"))).start()
    assert server.server is not None
    yield f"http://127.0.0.1:{server.server.http_port}"
    server.stop()


def test_the_index_lists_the_endpoints_as_json(http):
    status, content_type, body = get(http + "/")
    assert status == 200 and content_type == "application/json"
    document = json.loads(body)
    assert document["name"] == "adrank" and document["version"] == __version__
    listed = {(e["method"], e["path"]) for e in document["endpoints"]}
    expected = {"/healthz", "/readyz", "/metrics", "/dashboard", "/v2", "/v2/health/ready", "/v2/models/stats"}
    assert {("GET", path) for path in expected} <= listed
    assert ("POST", "/v2/models/{model}[/versions/{version}]/infer") in listed
    assert all(e["what"] for e in document["endpoints"])


def test_a_browser_gets_html_whose_links_all_answer(http):
    status, content_type, body = get(http + "/", accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert status == 200 and content_type.startswith("text/html")
    links = re.findall(r"href='([^']+)'", body.decode())
    assert {"/healthz", "/readyz", "/metrics", "/dashboard", "/v2"} <= set(links)
    for link in links:
        assert get(http + link)[0] == 200, link


def test_a_server_without_metrics_does_not_list_them():
    paths = {e["path"] for e in json.loads(index_reply(metrics=False, accept="*/*").body)["endpoints"]}
    assert "/healthz" in paths and "/v2" in paths
    assert "/metrics" not in paths and "/dashboard" not in paths
