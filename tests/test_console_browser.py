"""The console (/console) in a real browser, through nginx, against a real stack with keys on:
a reader key typed once, the device list, filters and "load more", a device's HTML shown as
text, and a newly posted log arriving in the live tail.

Headless Chromium driven by Selenium, pointed at Debian's chromedriver (tests/test_browser.py
says how; nothing is downloaded). Each test leaves a screenshot in its tmp_path, as a CI
artefact; with CONSOLE_SCREENSHOT=<path> (e.g. docs/console.png) the live-tail test also
writes its screenshot there: that is how docs/console.png is made.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import re
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from collector.devtools import fleet
from collector.devtools.processes import ROOT, nginx_binary, wait_until
from collector.pipeline import keyring
from collector.store import keys
from tests.stack import Stack
from tests.test_browser import browser_programs, click, visible, wait

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WAIT = 30  # a bound on a broken setup, not a measure of speed
PREFIX = "console-"
DEVICES = [f"{PREFIX}{n:05d}" for n in range(1, 7)]
STUCK = "i2c bus stuck on sensor temp"  # the filter test's needle: 7 ERRORs of one device, one WARNING
HTML_MESSAGE = "<img src=x onerror=alert(1)>"
HTML_DATA = {"note": "<script>alert(2)</script>", "fw": "1.4.3"}
# What the browser's console may say without failing a test: the 401 and 422 the tests provoke,
# and the favicon a browser asks for beside the SVG open_console opens.
HARMLESS = re.compile(r"Failed to load resource: the server responded with a status of (401|422)"
                      r"|/favicon\.ico - Failed to load resource")


def seed_logs() -> list[dict]:
    """A small fleet's last two hours (collector.devtools.fleet's mix, seeded), and the logs the
    tests look for."""
    rng = random.Random(13)
    now = dt.datetime.now(dt.UTC)
    logs = []
    for seq in range(1, 121):
        device = DEVICES[seq % len(DEVICES)]
        log = fleet.make_log(device, seq, rng)
        log["timestamp"] = (now - dt.timedelta(seconds=rng.uniform(60, 7200))).isoformat(timespec="milliseconds")
        logs.append(log)
    for i in range(7):
        logs.append({"device_id": DEVICES[1], "log_level": "ERROR", "message": f"{STUCK}{i}",
                     "log_data": {"bus": 1, "attempt": i},
                     "timestamp": (now - dt.timedelta(minutes=5 + 3 * i)).isoformat(timespec="milliseconds")})
    logs.append({"device_id": DEVICES[1], "log_level": "WARNING", "message": f"{STUCK}9 (recovered)",
                 "timestamp": (now - dt.timedelta(minutes=4)).isoformat(timespec="milliseconds")})
    logs.append({"device_id": DEVICES[2], "log_level": "WARNING", "message": HTML_MESSAGE, "log_data": HTML_DATA,
                 "timestamp": (now - dt.timedelta(minutes=90)).isoformat(timespec="milliseconds")})
    return logs


def make_key(settings, role: str, prefix: str | None = None) -> str:
    """A key, made as `python -m collector.keys create` makes one (in the database, then in Redis)."""
    key_id, secret, digest = keyring.new_secret()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        row = keys.add(conn, key_id, f"console test {role}", role, None, prefix, digest)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keyring.publish(client, settings, row)
    finally:
        client.close()
    return secret


@pytest.fixture(scope="module")
def stack(base_settings, empty_tables, tmp_path_factory):
    """One API (both of nginx's upstreams), a worker, beat and nginx, keys on; the seed stored."""
    if nginx_binary() is None:
        pytest.fail("nginx is required for this test: apt-get install -y nginx")
    empty_tables()
    settings = dataclasses.replace(base_settings, key_prefix=base_settings.key_prefix + "console:")
    running = Stack({"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
                     "KEY_PREFIX": settings.key_prefix, "DRAIN_INTERVAL": "0.25", "AUTH_ENABLED": "true"},
                    tmp_path_factory.mktemp("console-stack"))
    try:
        running.start_api(0)
        running.api_ports.append(running.api_ports[0])
        running.start_worker(concurrency=1)
        running.start_beat()
        front = running.start_nginx()
        fleet_key = make_key(settings, "device", PREFIX)
        reader_key = make_key(settings, "reader")
        logs = seed_logs()
        posted = requests.post(f"{front}/api/logs/batch", json={"logs": logs}, timeout=10,
                               headers={"Authorization": f"Bearer {fleet_key}"})
        assert posted.status_code == 200, posted.text

        def stored() -> bool:
            with psycopg.connect(settings.database_url) as conn:
                return conn.execute("SELECT count(*) FROM logs").fetchone()[0] >= len(logs)

        wait_until(stored, WAIT, f"the {len(logs)} seed logs to be stored")
        yield {"front": front, "reader": reader_key, "fleet": fleet_key, "logs": logs, "stack": running}
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = browser_programs()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,960", "--no-first-run", "--disable-extensions", "--lang=en-GB",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP reports and script errors
    service = Service(executable_path=driver_path,
                      log_output=str(tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, stack, tmp_path):
    """The browser; afterwards a screenshot in tmp_path and no script error or CSP violation."""
    yield browser
    browser.save_screenshot(str(tmp_path / "console.png"))
    problems = [entry["message"] for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE" and not HARMLESS.search(entry["message"])]
    assert problems == [], problems


def open_console(driver, stack, fragment: str = "", key: str | None = "reader") -> None:
    """Open /console (a fresh page, not a same-page #fragment change) with the key a person
    typed earlier in this tab (sessionStorage), or none."""
    driver.get(f"{stack['front']}/console/assets/icon.svg")  # this origin, no script
    if key is None:
        driver.execute_script("sessionStorage.clear()")
    else:
        driver.execute_script("sessionStorage.setItem('collector-console-key', arguments[0])", stack[key])
    driver.get(f"{stack['front']}/console{fragment}")


def until(driver, condition, what: str):
    """wait(...).until, failing with what the page says (its statuses and error)."""
    try:
        return wait(driver, WAIT).until(condition, what)
    except TimeoutException:
        said = {i: driver.find_element(By.ID, i).text for i in ("logs-status", "live-status", "devices-status",
                                                                 "error")}
        pytest.fail(f"timed out waiting for {what}; the page says {said}")


def rows(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#logs tbody tr")


def status(driver) -> str:
    return driver.find_element(By.ID, "logs-status").text


def settled(driver) -> str:
    """The log table's status once a request has answered (not "Loading…")."""
    return until(driver, lambda d: (text := status(d)) and not text.startswith("Loading") and text, "the logs to load")


def error_text(driver) -> str:
    box = driver.find_element(By.ID, "error")
    return box.text if box.is_displayed() else ""


def device_rows(driver) -> dict[str, list[str]]:
    found = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr"):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
        found[cells[0]] = cells[1:]
    return found


def type_into(driver, element_id: str, text: str, enter: bool = False) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(text + (Keys.ENTER if enter else ""))


def shortcut(driver, key: str) -> None:
    """Press `key` as a person would with no field focused."""
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    ActionChains(driver).send_keys(key).perform()


def test_a_key_typed_once_lists_the_devices_with_their_counts(page, stack):
    open_console(page, stack, key=None)
    assert page.title.startswith("Console")
    # No key yet: the API's own 401, shown, and the key field focused.
    assert "401 unauthorized" in until(page, error_text, "the 401 to be shown")
    assert page.switch_to.active_element.get_attribute("id") == "key"
    type_into(page, "key", "ck.000000000000.not-a-key", enter=True)
    until(page, lambda d: "unknown or revoked" in error_text(d), "the wrong key's 401")

    type_into(page, "key", stack["reader"], enter=True)
    shown = until(page, lambda d: len(device_rows(d)) == len(DEVICES) and device_rows(d),
                                   "the six devices")
    assert error_text(page) == ""
    assert page.find_element(By.ID, "key").get_attribute("value") == ""  # not left on screen
    assert page.execute_script("return sessionStorage.getItem('collector-console-key')") == stack["reader"]

    # Level counts: D I W E C total, as posted.
    expected = {device: [0] * 5 for device in DEVICES}
    for log in stack["logs"]:
        expected[log["device_id"]][fleet.LEVELS.index(log["log_level"])] += 1
    for device, cells in shown.items():
        assert "ago" in cells[0], cells  # last seen
        counts = [int(c.replace(",", "")) for c in cells[1:]]
        assert counts == [*expected[device], sum(expected[device])], device

    # Keyboard: `?` lists the shortcuts, Esc closes them, `d` goes to the devices, with a visible focus ring.
    shortcut(page, "?")
    assert page.find_element(By.ID, "help").get_attribute("open") is not None
    ActionChains(page).send_keys(Keys.ESCAPE).perform()
    until(page, lambda d: d.find_element(By.ID, "help").get_attribute("open") is None, "the shortcuts to close")
    shortcut(page, "d")
    focused = page.switch_to.active_element
    assert focused.get_attribute("data-device") in DEVICES
    assert page.execute_script("const s = getComputedStyle(arguments[0]);"
                               "return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2", focused)

    # Typed once: a reload keeps the key for this tab.
    page.refresh()
    until(page, lambda d: len(device_rows(d)) == len(DEVICES), "the devices after a reload")
    assert error_text(page) == "" and "in use" in page.find_element(By.ID, "key-state").text


def test_filters_and_load_more_page_through_one_device(page, stack):
    open_console(page, stack)
    until(page, lambda d: len(device_rows(d)) == len(DEVICES), "the device list")
    click(page, visible(page, f"#devices .device-link[data-device='{DEVICES[1]}']"))
    until(page, lambda d: DEVICES[1] in d.find_element(By.ID, "scope-label").text, "the device view")
    settled(page)
    assert {r.find_element(By.CSS_SELECTOR, ".device").text for r in rows(page)} == {DEVICES[1]}

    # ERROR only, a case-insensitive substring, three a page; Enter in the search field runs it.
    click(page, page.find_element(By.CSS_SELECTOR, "input[name=level][value=ERROR]"))
    type_into(page, "f-limit", "3")
    shortcut(page, "/")  # focuses the search
    assert page.switch_to.active_element.get_attribute("id") == "f-q"
    page.switch_to.active_element.send_keys("I2C BUS STUCK" + Keys.ENTER)
    until(page, lambda d: len(rows(d)) == 3 and "more to load" in status(d), "the first page")
    click(page, visible(page, "#more"))
    until(page, lambda d: len(rows(d)) == 6, "the second page")
    shortcut(page, "n")  # loads the next page
    until(page, lambda d: len(rows(d)) == 7 and "no more" in status(d), "the last page")
    assert not page.find_element(By.ID, "more").is_displayed()

    found = [(r.find_element(By.CSS_SELECTOR, ".level").text, r.find_element(By.CSS_SELECTOR, ".message").text,
              r.find_element(By.TAG_NAME, "time").get_attribute("datetime")) for r in rows(page)]
    assert sorted(message for _, message, _ in found) == [f"{STUCK}{i}" for i in range(7)]
    assert {level for level, _, _ in found} == {"ERROR"}  # the WARNING one is filtered out
    times = [when for _, _, when in found]
    assert times == sorted(times, reverse=True)  # newest first
    assert "level=ERROR" in page.current_url and "q=I2C" in page.current_url  # a link to this view

    # A bad filter: the API's 422 names it, and the field is marked.
    type_into(page, "f-q", "ab", enter=True)
    until(page, lambda d: "422" in error_text(d), "the 422")
    assert "q:" in error_text(page)
    assert page.find_element(By.ID, "f-q").get_attribute("aria-invalid") == "true"


def test_a_devices_html_is_shown_as_text(page, stack):
    open_console(page, stack, f"#device={DEVICES[2]}&q=onerror")
    until(page, lambda d: len(rows(d)) == 1, "the log carrying HTML")
    row = rows(page)[0]
    assert row.find_element(By.CSS_SELECTOR, ".message").text == HTML_MESSAGE
    data = row.find_element(By.CSS_SELECTOR, ".data").text
    assert "<script>alert(2)</script>" in data
    assert page.find_elements(By.CSS_SELECTOR, "#logs img, #logs script, main img, main script") == []
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018 (nothing ran alert())
    # And the browser would refuse an HTML string from any script of the page (Trusted Types).
    refused = page.execute_script(
        "try { document.createElement('div').innerHTML = '<b>x</b>'; return 'accepted'; }"
        " catch (e) { return e.name; }")
    assert refused == "TypeError"
    # The browser reported it, as it would any violation (which the `page` fixture fails on).
    assert any("TrustedHTML" in entry["message"] for entry in page.get_log("browser"))


def test_a_newly_posted_log_appears_in_the_live_tail(page, stack):
    front = stack["front"]
    open_console(page, stack, f"#device_prefix={PREFIX}")
    until(page, lambda d: len(rows(d)) > 0, "the fleet's logs")
    shortcut(page, "t")  # turns the tail on
    until(page, lambda d: "connected" in d.find_element(By.ID, "live-status").text or error_text(d),
                           "the tail to connect")
    assert error_text(page) == "", error_text(page)
    marker = f"fan stalled, restarting ({uuid.uuid4().hex[:8]})"
    posted = requests.post(f"{front}/api/log", timeout=10, headers={"Authorization": f"Bearer {stack['fleet']}"},
                           json={"device_id": DEVICES[0], "log_level": "WARNING", "message": marker,
                                 "log_data": {"rpm": 0, "fw": "2.0.1"}})
    assert posted.status_code == 200, posted.text
    first = until(page,
        lambda d: (found := rows(d)) and marker in found[0].text and found[0], "the new log at the top")
    assert "live" in first.get_attribute("class")
    assert "1 new log" in page.find_element(By.ID, "live-status").text
    target = os.environ.get("CONSOLE_SCREENSHOT")
    if target:
        page.save_screenshot(str(Path(ROOT, target)))
