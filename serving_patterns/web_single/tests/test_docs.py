"""The docs every service serves, checked on S1 as a user without internet would see them.

Swagger UI and ReDoc are rendered by headless Chromium that resolves no host but this
machine's: the pages must draw their operations from the service's own assets, load nothing
from elsewhere, and "Try it out" must fill in a body the predictor accepts.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from patternkit.browser import Browser, Page, chromium_binary
from patternkit.client import Client
from patternkit.schemas import PREDICT_EXAMPLE
from patternkit.service.docs import request_example
from patternkit.topology import Stack

# the operation paths Swagger UI drew, once the /predict block is there
SWAGGER_PATHS_JS = """(() => {
  const paths = Array.from(document.querySelectorAll('.opblock .opblock-summary-path'),
                           (e) => e.textContent.trim());
  return paths.includes('/predict') ? paths : null;
})()"""
# "Try it out" is on: expanding POST /predict shows the body it would send
PREDICT_BLOCK_JS = """Array.from(document.querySelectorAll('.opblock-post')).find(
  (b) => b.querySelector('.opblock-summary-path')?.textContent.trim() === '/predict')"""
OPEN_PREDICT_JS = f"""(() => {{
  ({PREDICT_BLOCK_JS}).querySelector('.opblock-summary-control').click();
  return true;
}})()"""
TRY_BODY_JS = f"""(() => {{
  const area = ({PREDICT_BLOCK_JS})?.querySelector('textarea.body-param__text');
  return area ? area.value : null;
}})()"""
REDOC_PATHS_JS = """(() => {
  const text = document.querySelector('.api-content')?.textContent || '';
  return text.includes('/predict') ? text.length : null;
})()"""

needs_chromium = pytest.mark.skipif(not chromium_binary(), reason="no chromium (apt-get install "
                                    "chromium, or set CHROMIUM)")


def foreign(page: Page, origin: str) -> list[str]:
    """URLs the page requested from anywhere but `origin` (data: and blob: are in-page), and
    that its Content-Security-Policy did not block before they left."""
    blocked = {e["params"]["requestId"] for e in page.events
               if e["method"] == "Network.loadingFailed" and e["params"].get("blockedReason")}
    sent = [e["params"] for e in page.events if e["method"] == "Network.requestWillBeSent"]
    page.requested_urls()  # a round trip, so the last events are in
    return [
        p["request"]["url"] for p in sent
        if p["requestId"] not in blocked
        and urlsplit(p["request"]["url"]).scheme not in ("data", "blob")
        and not p["request"]["url"].startswith(origin + "/")
    ]


@needs_chromium
@pytest.mark.parametrize("service", ["predictor", "lb"])
def test_swagger_ui_renders_offline_from_the_service_itself(stack: Stack, service: str) -> None:
    base = stack.url(service)
    with Browser(offline=True) as browser, browser.open(f"{base}/docs") as page:
        paths = page.wait_for(SWAGGER_PATHS_JS, "Swagger UI drawing the /predict operation")
        assert "/predict" in paths and "/health" in paths
        page.evaluate(OPEN_PREDICT_JS)
        body = page.wait_for(TRY_BODY_JS, "the /predict request body editor")
        assert foreign(page, base) == []
        urls = page.requested_urls()
    assert f"{base}/docs/assets/swagger-ui-bundle.js" in urls
    assert f"{base}/openapi.json" in urls
    # what "Try it out" would send is the documented example, and the service takes it
    assert json.loads(body) == PREDICT_EXAMPLE
    with Client(base) as client:
        reply = client.post("/predict", content=body,
                            headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["prediction"] == [0]  # the first iris row is a setosa


@needs_chromium
def test_redoc_renders_offline_and_its_cdn_logo_is_blocked(stack: Stack) -> None:
    base = stack.url("predictor")
    with Browser(offline=True) as browser, browser.open(f"{base}/redoc") as page:
        page.wait_for(REDOC_PATHS_JS, "ReDoc drawing the /predict operation")
        assert foreign(page, base) == []


@pytest.mark.parametrize("service", ["predictor", "lb"])
def test_the_documented_example_is_accepted(stack: Stack, service: str) -> None:
    with Client(stack.url(service)) as client:
        doc = client.get("/openapi.json").json()
        example = request_example(doc, "/predict")
        reply = client.post("/predict", json=example)
        assert reply.status_code == 200, reply.text
        documented = doc["paths"]["/predict"]["post"]["responses"]
        error = documented["422"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorBody"}
        refused = client.post("/predict", json={"data": [[0]]})  # FastAPI's own default sample
        assert refused.status_code == 422
        assert set(refused.json()) == set(doc["components"]["schemas"]["ErrorBody"]["properties"])


def test_docs_pages_and_assets_are_served_without_a_cdn(stack: Stack) -> None:
    with Client(stack.url("predictor")) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            assert "cdn." not in html.text and "https://" not in html.text
            assert "default-src 'self'" in html.headers["content-security-policy"]
        js = client.get("/docs/assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        missing = client.get("/docs/assets/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
