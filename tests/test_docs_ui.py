"""``/docs`` and ``/redoc`` work on a machine with no route off it (a GPU cluster without internet).

The proof is a real browser: Debian's Chromium, headless, with every host but 127.0.0.1 made
unresolvable and every proxied request sent to a closed port, opens the pages of a real server and
must render the ``POST /score`` operation. The same browser, on the same server, renders nothing
from FastAPI's stock page (Swagger UI from the CDN), so it is the packaged assets that make it work.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from debian_packages import ensure_binaries
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from prometheus_client.parser import text_string_to_metric_families
from serving import serve_app

from reward_server.items.settings import Settings
from reward_server.service.app import create_app
from reward_server.service.docs_ui import ASSETS, STATIC_URL, install_docs_ui

TOKEN = "docs-ui-token"
CDN_PAGE = "/docs-cdn"  # added by this test only: FastAPI's default page, served from the same origin

# No route off the machine: names other than 127.0.0.1 do not resolve, and anything sent through
# a proxy goes to the discard port, where nothing listens. Chromium's own background traffic
# (component updates, sync, first-run fetches) is switched off too.
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    return ensure_binaries("chromium", "chromium")[0]


@pytest.fixture(scope="module")
def docs_server(default_table) -> Iterator[str]:
    """A real server with a scoring token and the smallest body limit: neither may get in the way of
    the pages and their assets, which are GETs without a token whose answers are megabytes."""
    settings = Settings(host="127.0.0.1", port=0, api_token=TOKEN, max_body_bytes=1024)
    app = create_app(default_table, settings)

    async def cdn_page() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "", title="CDN assets")

    app.add_api_route(CDN_PAGE, cdn_page, include_in_schema=False)
    with serve_app(app) as url:
        yield url


def rendered_dom(chromium: str, url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium with the network cut off."""
    done = subprocess.run(
        [chromium, *OFFLINE_FLAGS, f"--user-data-dir={profile}", "--dump-dom", "--virtual-time-budget=10000", url],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, f"chromium failed on {url} ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


class Operations(HTMLParser):
    """(method, path) of each operation Swagger UI rendered: an ``opblock opblock-<method>`` block
    holding an ``opblock-summary-path`` span whose ``data-path`` is the route."""

    def __init__(self) -> None:
        super().__init__()
        self.method: str | None = None
        self.found: set[tuple[str, str]] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if "opblock" in classes:
            self.method = next((c.removeprefix("opblock-") for c in classes if c.startswith("opblock-")), None)
        if "opblock-summary-path" in classes and self.method and attributes.get("data-path"):
            self.found.add((self.method, attributes["data-path"] or ""))


def operations(dom: str) -> set[tuple[str, str]]:
    parser = Operations()
    parser.feed(dom)
    return parser.found


def test_docs_pages_link_only_to_this_server(docs_server: str) -> None:
    """Every script, style sheet and icon the pages name is on this server, and answers without the
    scoring token and despite the 1 KiB body limit. Runs without a browser."""
    with httpx.Client(base_url=docs_server, timeout=30) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200, (page, html.text[:500])
            links = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', html.text)
            assert links, f"{page} names no assets"
            assert all(link.startswith(f"{STATIC_URL}/") for link in links), (page, links)
            hosts = re.findall(r"https?://(?!www\.w3\.org/)[^\s\"'<>]+", html.text)  # w3.org: SVG namespaces
            assert not hosts, f"{page} names other hosts: {hosts}"
        for name in ASSETS:
            asset = client.get(f"{STATIC_URL}/{name}")
            assert asset.status_code == 200, (name, asset.text[:300])
            assert len(asset.content) > 1000, name
        redirect = client.get("/docs/oauth2-redirect")
        assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()
        assert client.get(f"{STATIC_URL}/no-such-file.js").status_code == 404


def requests_by_endpoint(client: httpx.Client) -> dict[str, float]:
    """``reward_requests_total`` summed over outcomes, per endpoint label."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "reward_requests_total":
                endpoint = sample.labels["endpoint"]
                totals[endpoint] = totals.get(endpoint, 0.0) + sample.value
    return totals


def test_asset_requests_share_one_metrics_label(docs_server: str) -> None:
    """A request for any file under the mount, found or not, is labelled with the mount, never the
    file, nor ``other``: a scanner walking /docs/static/* must not mint series, and the docs' own
    traffic must not hide among scanners' probes."""
    sent = (*ASSETS, "probe-1.js", "probe-2.css")
    with httpx.Client(base_url=docs_server, timeout=30) as client:
        before = requests_by_endpoint(client)
        for name in sent:
            client.get(f"{STATIC_URL}/{name}")
        after = requests_by_endpoint(client)
    assert after.get(STATIC_URL, 0.0) - before.get(STATIC_URL, 0.0) == len(sent), after
    assert after.get("other", 0.0) == before.get("other", 0.0), after
    assert not [e for e in after if e.startswith(f"{STATIC_URL}/")], after


def test_swagger_ui_and_redoc_render_with_no_route_off_the_machine(
    chromium: str, docs_server: str, tmp_path: Path
) -> None:
    schema = httpx.get(f"{docs_server}/openapi.json", timeout=30).json()
    score_id = schema["paths"]["/score"]["post"]["operationId"]

    swagger = rendered_dom(chromium, f"{docs_server}/docs", tmp_path / "swagger")
    assert ("post", "/score") in operations(swagger), f"/docs rendered no POST /score:\n{swagger[:3000]}"

    redoc = rendered_dom(chromium, f"{docs_server}/redoc", tmp_path / "redoc")
    assert f'data-section-id="operation/{score_id}"' in redoc, f"/redoc rendered no /score:\n{redoc[:3000]}"

    # The negative: FastAPI's stock page, same origin, same browser flags. Its scripts are on the
    # CDN, so the page arrives (the mount point is there) but nothing is rendered into it.
    stock = rendered_dom(chromium, f"{docs_server}{CDN_PAGE}", tmp_path / "stock")
    assert 'id="swagger-ui"' in stock and "cdn.jsdelivr.net" in stock, stock[:3000]
    assert not operations(stock) and "opblock" not in stock, "the CDN page rendered: the network was not cut off"


def test_stock_docs_routes_must_be_off() -> None:
    """FastAPI's own /docs would come first in the router and quietly load the CDN again."""
    with pytest.raises(ValueError, match="docs_url=None"):
        install_docs_ui(FastAPI())
