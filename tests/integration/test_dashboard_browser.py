"""The dashboard in a real headless browser (Debian's chromium driven by Playwright): the
diamond's four pipelines drawn, live counters that grow; a screenshot for the test output and
the README (docs/dashboard.png, refreshed when PORCH_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from porch import web
from porch.graph import Node, Replica, to_dict
from porch.status import (
    DaemonStatus,
    PipelineStatus,
    ProcessStatus,
    RemoteStatus,
    Snapshot,
    StatusReport,
)
from tests.integration.conftest import REPO_ROOT, Porchd
from tests.integration.test_dashboard import dashboard_url

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.integration]

Start = Callable[..., Porchd]
CHROMIUM = Path("/usr/bin/chromium")
# No network, no first-run work: the page must need nothing but porchd.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
PAGE_TIMEOUT_MS = 15_000
README_SHOT = REPO_ROOT / "docs" / "dashboard.png"


def require_browser() -> None:
    """Skip without chromium or Playwright, except on CI (CI=true), where that is a failure."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    if not missing:
        return
    reason = "browser test needs " + " and ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def node_iterations(page: Page, name: str) -> int:
    """The iteration count drawn in a node of the graph ("iter N · ...")."""
    label = page.locator(f'g.node[data-name="{name}"] text[data-field="iterations"]')
    return int((label.text_content() or "iter -1").split()[1])


@pytest.mark.timeout(120)
def test_dashboard_draws_the_diamond_live(tmp_path: Path, porchd: Start) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    daemon = porchd(REPO_ROOT / "examples" / "diamond", extra=("--http", "127.0.0.1:0"))
    url = dashboard_url(daemon)
    assert "/?token=" in url  # on loopback too: the page reads the token from its address
    daemon.wait_running("pipeline_a", "pipeline_b", "pipeline_c", "pipeline_d")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 560})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.goto(url, timeout=PAGE_TIMEOUT_MS)
            page.wait_for_selector("body[data-ready=true]", timeout=PAGE_TIMEOUT_MS)
            nodes = page.locator("svg#graph g.node")
            assert nodes.count() == 4
            names = sorted(nodes.nth(i).get_attribute("data-name") or "" for i in range(4))
            assert names == ["pipeline_a", "pipeline_b", "pipeline_c", "pipeline_d"]
            assert page.locator("svg#graph path.edge").count() == 4
            page.wait_for_selector('g.node[data-name="pipeline_d"][data-state="running"]',
                                   timeout=PAGE_TIMEOUT_MS)  # fmt: skip
            before = node_iterations(page, "pipeline_d")
            cell = 'tr[data-name="pipeline_d"] td[data-field="msgs_in"]'
            in_before = int(page.locator(cell).text_content() or "0")
            page.wait_for_function(  # the page redraws itself: nothing reloads it
                """([sel, n]) => {
                    const t = document.querySelector(sel);
                    return t && parseInt(t.textContent.split(" ")[1]) >= n;
                }""",
                arg=['g.node[data-name="pipeline_d"] text[data-field="iterations"]', before + 3],
                timeout=PAGE_TIMEOUT_MS,
            )
            assert node_iterations(page, "pipeline_d") >= before + 3
            assert int(page.locator(cell).text_content() or "0") > in_before
            page.wait_for_selector("text.rate", timeout=PAGE_TIMEOUT_MS)  # edges show msgs/s
            assert "msg/s" in (page.locator("text.rate").first.text_content() or "")
            assert not errors, errors
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("PORCH_UPDATE_SCREENSHOTS") == "1":  # refresh the README's picture
        shutil.copyfile(shot, README_SHOT)


@pytest.mark.timeout(60)
def test_dashboard_shows_a_replicated_pipeline_once_with_its_replicas_under_it() -> None:
    """The page's script on a replicated pipeline's status (issue 13), served by porchd's own
    HTTP server in this process from a fixed snapshot: no porchd needed to draw it."""
    require_browser()
    from playwright.sync_api import sync_playwright

    names = ("hash#a1b2c3-0", "hash#a1b2c3-1")
    replicas = [PipelineStatus(names[0], "running", ProcessStatus(pid=11), {"iterations": 4},
                               rate_per_s=1.0, queue_depth=0),
                PipelineStatus(names[1], "failed", ProcessStatus(), {"iterations": 6},
                               rate_per_s=0.0, queue_depth=0)]  # fmt: skip
    hashed = PipelineStatus.replicated("hash", replicas)
    nodes = [
        Node("hash", hashed.state, (), replicas=tuple(Replica(r.name, r.state) for r in replicas))
    ]
    far = tuple(RemoteStatus(f"far#{tag}-0", host=host, state=state, used=True)
                for tag, host, state in (("0f0f0f", "10.0.0.2", "failed"),
                                         ("e0e0e0", "10.0.0.3", "running")))  # fmt: skip
    report = StatusReport(DaemonStatus(pid=1, version="x"), (hashed,), far)
    snapshot = Snapshot(report, to_dict(nodes))
    server = web.DashboardServer(web.HttpPlan("127.0.0.1", 0, "t0ken", loopback=True),
                                 lambda: snapshot)  # fmt: skip
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url, timeout=PAGE_TIMEOUT_MS)
                page.wait_for_selector("body[data-ready=true]", timeout=PAGE_TIMEOUT_MS)
                rows = page.locator("#pipelines tbody tr")
                shown = [rows.nth(i).get_attribute("data-name") for i in range(rows.count())]
                state = page.locator('tr[data-name="hash"] td[data-field="state"]')
                iterations = page.locator('tr[data-name="hash"] td[data-field="iterations"]')
                label = page.locator('g.node[data-name="hash"] text[data-field="state"]')
                replica_rows = page.locator("tr.replica").count()
                texts = (state.text_content(), iterations.text_content(), label.text_content())
                remote = page.locator('tr.remote[data-name="far"] td[data-field="state"]')
                remote_state = remote.text_content()
            finally:
                browser.close()
    finally:
        server.close()
    assert not errors, errors
    assert shown == ["hash", *names, "far", "far#0f0f0f-0", "far#e0e0e0-0"]
    assert replica_rows == 4  # the local ones and the other hosts'
    assert remote_state == "running (2 replicas)"  # running while any replica runs
    assert texts == ("running (1/2 replicas)", "10", "running · 2x")
