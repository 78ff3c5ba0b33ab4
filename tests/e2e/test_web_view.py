"""The web view in a real browser (headless Chromium through selenium) while a real fabric heals:
diamond of softswitches in Mininet, one connection, the page open; a silent cut of the primary
path's link must show on the page by itself (the link drawn down, the connection's path moved)
within a bound, without a reload.

The browser's screenshot is saved in the test's tmp_path (the path is printed); with
P4NSM_WRITE_DOCS=1 it is also written to docs/web_view.png, the README's picture.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import pytest

from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import load_topology, switch_ifname
from lab import faults
from tests.support.settings import settings_for_test

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MISSING = [tool for tool in (CHROMIUM, CHROMEDRIVER) if not Path(tool).exists()]
HEAL_BOUND_S = 10.0  # from the cut to the page showing it (detection ~0.1 s, a push every 0.25 s)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
    pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} (Debian: apt install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from lab.harness import Lab
    from tests.e2e.lab_fixtures import softswitch_or_skip

    softswitch_or_skip()
    topo = load_topology(REPO_ROOT / "topologies" / "diamond.yaml")
    run_dir = tmp_path_factory.mktemp("web-view")
    lab = Lab(topo, run_dir, tls=False)  # about HTTP: a controller with an SVID serves HTTPS
    lab.start()
    try:
        yield topo, run_dir
    finally:
        lab.stop()


@pytest.fixture
def browser():
    pytest.importorskip("selenium", reason="needs selenium (the test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,980"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def attribute(driver, selector: str, name: str) -> str | None:
    """Read in one script call: the page replaces its picture on every push, so an element found
    by one call may be gone by the next."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);",
                                 selector, name)


def link_state(driver, link: str) -> str | None:
    return attribute(driver, f'#picture line[data-link="{link}"]', "data-state")


def row_path(driver, conn_id: str) -> str | None:
    return attribute(driver, f'tr[data-conn="{conn_id}"] td.path', "data-path")


def wait(driver, what, timeout: float):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: what(d))


async def test_a_silent_cut_shows_on_the_open_page(lab, browser, tmp_path) -> None:
    topo, run_dir = lab
    ctl = Controller(topo, settings_for_test({"store_path": str(run_dir / f"{uuid.uuid4().hex[:6]}.sqlite")}))
    await ctl.start()
    cut: list[str] = []
    try:
        assert await ctl.wait_ready(30)
        assert ctl.web_url is not None
        plan = await ctl.fabric.connect("h1", "h4", labels={"service": "<b>web</b> & view"})
        link = plan.a_to_b.path.links[0]
        before = " ".join(plan.a_to_b.path.switches)
        await asyncio.to_thread(browser.get, ctl.web_url + "/")
        # selenium blocks: it runs in a thread so that the controller's loop serves the page meanwhile
        await asyncio.to_thread(wait, browser, lambda d: link_state(d, link) == "up" and row_path(d, plan.id) == before, 15)
        labels = await asyncio.to_thread(browser.execute_script, "return document.querySelector('td.labels').textContent")
        assert labels == "service=<b>web</b> & view"  # shown as the text it is, not as markup

        link_obj = ctl.fabric.graph.links[link]
        cut += [switch_ifname(link_obj.a, link_obj.a_port), switch_ifname(link_obj.b, link_obj.b_port)]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for ifname in cut:
            await asyncio.to_thread(faults.cut, ifname)
        await asyncio.to_thread(wait, browser, lambda d: link_state(d, link) == "down" and row_path(d, plan.id) not in (None, before),
                                HEAL_BOUND_S)
        shown_after = loop.time() - t0
        after = await asyncio.to_thread(row_path, browser, plan.id)
        assert after == " ".join(ctl.fabric.plans[plan.id].a_to_b.path.switches) and link not in ctl.fabric.plans[plan.id].a_to_b.path.links
        # the heal's events with their timings, and (once the round's repairs are done) no backup left
        await asyncio.to_thread(wait, browser, lambda d: attribute(d, '#events tr[data-kind="heal_round"]', "data-seq"), 5)
        shot = tmp_path / "web_view.png"
        await asyncio.to_thread(browser.save_screenshot, str(shot))
        print(f"\nweb view: the page showed the cut {shown_after:.2f}s after it; screenshot: {shot}")
        if os.environ.get("P4NSM_WRITE_DOCS") == "1":
            shutil.copy(shot, REPO_ROOT / "docs" / "web_view.png")
    finally:
        for ifname in cut:
            await asyncio.to_thread(faults.mend, ifname)
        for conn_id in list(ctl.fabric.plans):
            await ctl.fabric.disconnect(conn_id)
        await ctl.stop()
