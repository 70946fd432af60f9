"""What a person sees, in a real browser (headless Chromium driven by Selenium): the landing
page and where its links lead, Swagger UI's "Try it out", Flower's task list and the Locust
fleet's "Collector logs" tab, against a real stack (nginx, two APIs, a worker and beat).

The browser and its driver are Debian's `chromium` and `chromium-driver` (CI installs them:
.ci/run, collector/devtools/syscheck.py); Selenium is given their paths, so Selenium Manager
never runs and nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from collector.devtools.processes import ROOT, Process, free_port, nginx_binary, wait_until
from tests.stack import BIN, Stack, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
# Bounds on a broken setup, not measures of speed (a busy CI machine renders slowly).
WAIT = 60
LOG = {"device_id": "browser-001", "log_level": "INFO", "message": "from tests/test_browser.py"}
STORED = re.compile(r"stored (\d+) of (\d+)")


def browser_programs() -> tuple[str, str]:
    """Chromium and chromedriver: Debian's paths, else whatever is on PATH; fail (not skip) without them."""
    chromium = next((p for p in (CHROMIUM, shutil.which("chromium"), shutil.which("chromium-browser"))
                     if p and Path(p).is_file()), None)
    driver = next((p for p in (CHROMEDRIVER, shutil.which("chromedriver")) if p and Path(p).is_file()), None)
    if chromium is None or driver is None:
        pytest.fail(f"the browser tests need Chromium and its driver ({chromium=}, {driver=}): {INSTALL}")
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = browser_programs()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    # An explicit driver path: Selenium Manager (which would download one) is never run.
    service = Service(executable_path=driver_path, log_output=str(log))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # and if it were, offline
        driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def stack(base_settings, tmp_path_factory):
    """nginx, two APIs, a worker and beat (keys off), and Flower, which the landing page links to."""
    if nginx_binary() is None:
        pytest.fail("nginx is required for this test: apt-get install -y nginx")
    log_dir = tmp_path_factory.mktemp("stack")
    flower_port = free_port()
    flower_url = f"http://127.0.0.1:{flower_port}"
    prefix = base_settings.key_prefix + "browser:"
    running = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                     "KEY_PREFIX": prefix, "DRAIN_INTERVAL": "0.5", "FLOWER_URL": flower_url}, log_dir)
    # The Procfile's flower line, on a port of its own.
    flower = Process("flower", [str(BIN / "celery"), "-A", "tasks.celery_app", "flower", "--address=127.0.0.1",
                                f"--port={flower_port}",
                                "--tasks_columns=name,uuid,state,result,received,runtime,worker"],
                     running.env, log_dir / "flower.log")
    try:
        front = running.start_all()
        flower.start()
        wait_until(lambda: requests.get(f"{flower_url}/healthcheck", timeout=2).status_code == 200, WAIT,
                   "Flower to answer", check=lambda: flower.alive() or pytest.fail(flower.output()[-3000:]))
        yield {"front": front, "flower": flower_url, "stack": running}
    finally:
        flower.stop()
        running.stop()
        sys.stderr.write(f"--- flower (tail) ---\n{flower.output()[-2000:]}\n"
                         f"--- worker (tail) ---\n{running.tail('worker')}\n")


def wait(driver, timeout: float = WAIT, poll: float = 0.25) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=poll, ignored_exceptions=(StaleElementReferenceException,))


def visible(driver, css: str, within=None, timeout: float = WAIT):
    """The first element matching `css` (inside `within`, or the page) once it is displayed."""
    root = within or driver

    def shown(_):
        found = [e for e in root.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return found[0] if found else False

    return wait(driver, timeout).until(shown, f"{css!r} to be displayed on {driver.current_url}")


def click(driver, element) -> None:
    """Scroll it into view and click it, as a person would (a real click event)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    wait(driver).until(lambda _: element.is_displayed() and element.is_enabled(), "the element to be clickable")
    element.click()


def follow(driver, start: str, href: str) -> str:
    """Open `start`, click its link to `href` and wait for the next page; that page's URL."""
    driver.get(start)
    click(driver, visible(driver, f"a[href='{href}']"))
    wait(driver).until(lambda d: d.current_url.rstrip("/") != start.rstrip("/"), f"the page {href} leads to")
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return driver.current_url


def test_the_landing_page_renders_and_its_links_lead_where_they_say(browser, stack):
    front, flower = stack["front"], stack["flower"]
    browser.get(f"{front}/")
    wait(browser).until(ec.title_contains("Device log collector"))
    assert visible(browser, "h1").text == "Device log collector"
    hrefs = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")}
    expected = {f"{front}/console", f"{front}/docs", f"{front}/openapi.json", f"{front}/health", f"{front}/livez",
                f"{front}/metrics", f"{front}/api/stats", flower, f"{flower}/"}
    assert {f"{front}/console", f"{front}/docs", f"{front}/health", f"{front}/metrics"} <= hrefs, hrefs
    assert hrefs & {flower, f"{flower}/"}, hrefs
    assert hrefs <= expected, hrefs - expected
    # Keys off: everyone is an admin, so the page shows the pipeline's figures.
    figures = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.CSS_SELECTOR, "td.n").text
               for row in browser.find_elements(By.CSS_SELECTOR, "table tr")}
    assert set(figures) == {"accepted", "persisted", "backlog", "dead-lettered"}, figures
    assert all(value.isdigit() for value in figures.values()), figures

    # Each link, clicked: Swagger UI draws the API; health and metrics answer; Flower is Flower.
    assert follow(browser, f"{front}/", "/docs") == f"{front}/docs"
    visible(browser, ".swagger-ui .info .title")
    assert "Device log collector" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert visible(browser, ".opblock-summary-path[data-path='/api/log']")

    assert follow(browser, f"{front}/", "/health") == f"{front}/health"
    health = json.loads(visible(browser, "body").text)  # Chromium shows JSON as text
    assert health["checks"] == {"redis": True, "postgres": True}, health

    assert follow(browser, f"{front}/", "/metrics") == f"{front}/metrics"
    assert "# TYPE" in visible(browser, "body").text

    browser.get(f"{front}/")
    click(browser, visible(browser, f"a[href^='{flower}']"))
    wait(browser).until(lambda d: d.current_url.startswith(flower), "Flower's page")
    wait(browser).until(ec.title_contains("Flower"))


def swagger_operation(driver, method: str, path: str):
    """The operation's block in Swagger UI, expanded."""
    css = f".opblock.opblock-{method}:has(.opblock-summary-path[data-path='{path}'])"
    block = visible(driver, css)
    if "is-open" not in block.get_attribute("class"):
        click(driver, block.find_element(By.CSS_SELECTOR, ".opblock-summary"))
    wait(driver).until(lambda d: "is-open" in d.find_element(By.CSS_SELECTOR, css).get_attribute("class"),
                       f"{method.upper()} {path} to open")
    return driver.find_element(By.CSS_SELECTOR, css)


def try_it_out(driver, method: str, path: str) -> tuple[str, str]:
    """Expand the operation, click "Try it out" then "Execute" leaving what Swagger UI filled in;
    the status and the body shown under "Server response"."""
    block = swagger_operation(driver, method, path)
    click(driver, visible(driver, ".try-out__btn", within=block))
    click(driver, visible(driver, "button.execute", within=block))
    status = visible(driver, ".live-responses-table .response .response-col_status", within=block)
    wait(driver).until(lambda _: status.text.strip().isdigit(), f"a status for {method.upper()} {path}")
    body = visible(driver, ".live-responses-table .response .response-col_description pre", within=block)
    return status.text.strip(), body.text


def test_swagger_ui_try_it_out_sends_the_example_log_and_reads_the_stats(browser, stack):
    browser.get(f"{stack['front']}/docs")
    status, body = try_it_out(browser, "post", "/api/log")
    assert status == "200", body
    assert '"queued"' in body, body

    status, body = try_it_out(browser, "get", "/api/stats")
    assert status == "200", body
    assert '"pipeline"' in body and '"accepted"' in body, body


def test_flower_lists_the_drain_runs_with_what_each_stored(browser, stack):
    front, flower = stack["front"], stack["flower"]

    def a_stored_drain_run(driver) -> str | bool:
        # Logs go in each time: Flower only sees the runs after it has subscribed to the events.
        for _ in range(3):
            assert requests.post(f"{front}/api/log", json=LOG, timeout=10).status_code == 200
        driver.get(f"{flower}/tasks")
        # The table is filled by JavaScript from /tasks/datatable: wait for its rows.
        rows = wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table tbody tr td:first-child")
                                  and d.find_elements(By.CSS_SELECTOR, "table tbody tr"), "Flower's task rows")
        for row in rows:
            text = row.text
            match = STORED.search(text)
            if "tasks.drain.drain_stream" in text and match and "SUCCESS" in text:
                return text
        return False

    row = wait(browser, 120, poll=1).until(a_stored_drain_run, "a drain_stream row in Flower saying 'stored N of N'")
    stored, of = map(int, STORED.search(row).groups())
    assert 0 < stored <= of, row


def test_the_locust_logs_tab_shows_accepted_persisted_and_backlog(browser, stack, tmp_path):
    port = free_port()
    web = f"http://127.0.0.1:{port}"
    out = (tmp_path / "locust.log").open("w")
    locust = subprocess.Popen(
        [str(BIN / "locust"), "-f", "locustfiles/devices.py", "--autostart", "--run-time", "20s", "-u", "3",
         "-r", "3", "--host", stack["front"], "--web-port", str(port), "--device-prefix", "browser"],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http_ok(f"{web}/", timeout=WAIT)
        browser.get(f"{web}/")
        # Ours is "Collector logs" (Locust's own "Logs" tab is its log viewer), key "logs".
        tabs = wait(browser).until(
            lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "[role='tab']")
                       if t.text.strip().lower() == "collector logs"],
            "the fleet's Collector logs tab")
        click(browser, tabs[-1])
        wait(browser).until(lambda _: tabs[-1].get_attribute("aria-selected") == "true", "the Logs tab to open")
        assert "tab=logs" in browser.current_url, browser.current_url

        def figures(driver) -> dict | bool:
            """The tab's rows (accepted, persisted, backlog) once all three show a total and some are accepted."""
            found = {}
            for row in driver.find_elements(By.CSS_SELECTOR, "table tbody tr, [role='row']"):
                cells = [c.text.strip() for c in row.find_elements(By.CSS_SELECTOR, "td, [role='cell']")]
                if cells and cells[0].split(" ")[0] in ("accepted", "persisted", "backlog"):
                    found[cells[0].split(" ")[0]] = cells
            totals = {name: cells[-1].replace(",", "") for name, cells in found.items()}
            if set(totals) == {"accepted", "persisted", "backlog"} and all(t.isdigit() for t in totals.values()) \
                    and int(totals["accepted"]) > 0:
                return {name: int(total) for name, total in totals.items()}
            return False

        shown = wait(browser, 90).until(figures, "the Logs tab to show accepted > 0, persisted and backlog")
        assert shown["accepted"] > 0 and shown["persisted"] >= 0 and shown["backlog"] >= 0, shown
    finally:
        locust.send_signal(signal.SIGTERM)
        try:
            locust.wait(30)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait(10)
        out.close()
        sys.stderr.write(f"--- locust (tail) ---\n{(tmp_path / 'locust.log').read_text()[-2000:]}\n")


def test_a_missing_browser_fails_naming_the_apt_command(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match=re.escape(INSTALL)):
        browser_programs()

