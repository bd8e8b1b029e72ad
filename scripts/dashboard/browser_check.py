#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's chromium, headless, driven through chromedriver.

Logs in with an API token (typed into the login form, never put in a URL), opens the fleet
overview, a device page, the audit page and the live event feed of a running `fleetward demo`,
saves a screenshot of each, and checks the rendered content against the API's own answers
(device counts, device ids, findings). Prints a JSON report; exits non-zero on any mismatch.

    browser_check.py --url http://127.0.0.1:PORT --token fw_... --out DIR
"""

import argparse
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait


def api(url, token, path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    failures = []
    report = {"screenshots": [], "checks": []}

    def check(name, ok, detail=""):
        report["checks"].append({"check": name, "ok": bool(ok), "detail": str(detail)[:300]})
        if not ok:
            failures.append(name)

    summary = api(a.url, a.token, "/api/v1/fleet/summary")
    devices = api(a.url, a.token, "/api/v1/devices?limit=1000")["items"]
    audit = api(a.url, a.token, "/api/v1/audit")

    opts = webdriver.ChromeOptions()
    opts.binary_location = a.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1800", "--no-first-run", "--disable-extensions"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=a.chromedriver), options=opts)
    wait = WebDriverWait(driver, 20)

    def shot(name):
        path = os.path.join(a.out, name + ".png")
        driver.save_screenshot(path)
        report["screenshots"].append(path)

    try:
        # Not logged in: the overview sends us to the login form.
        driver.get(a.url + "/")
        wait.until(ec.presence_of_element_located((By.ID, "token")))
        check("redirected to login", "/login" in driver.current_url, driver.current_url)
        driver.find_element(By.ID, "token").send_keys(a.token)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(ec.presence_of_element_located((By.ID, "total-devices")))
        check("token never in a URL", a.token not in driver.current_url, driver.current_url)
        check("session cookie is HttpOnly", all(c.get("httpOnly") for c in driver.get_cookies()), driver.get_cookies())

        # Overview: the counts are the fleet's.
        total = driver.find_element(By.CSS_SELECTOR, "#total-devices .big").text
        check("overview total = API total", total == str(summary["total"]), (total, summary["total"]))
        active = driver.find_element(By.CSS_SELECTOR, "#active-devices .big").text
        check("overview active = API active", active == str(summary["by_status"].get("active", 0)), active)
        rejected = int(driver.find_element(By.CSS_SELECTOR, "#rejected-24h .big").text)
        api_rejected = sum(b["count"] for b in summary["rejections"])
        check("overview rejections = API rejections", rejected == api_rejected and rejected > 0, (rejected, api_rejected))
        charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
        check("charts are rendered as SVG", len(charts) >= 4, len(charts))
        bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart rect")
        check("charts have bars", len(bars) >= 10, len(bars))
        refusals = driver.find_element(By.ID, "recent-refusals").text
        check("refused bad actors are shown", "chain.rejected" in refusals and "device.refused" in refusals, refusals[:200])
        shot("overview")

        # Devices list and a device page.
        driver.get(a.url + "/devices")
        wait.until(ec.presence_of_element_located((By.ID, "devices")))
        listed = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#devices a.device-id")]
        api_ids = [d["id"] for d in devices][:50]
        check("device list = API list", listed == api_ids, (listed[:3], api_ids[:3]))
        shot("devices")
        target = next((d["id"] for d in devices if d["id"].startswith("eval3-")), devices[0]["id"])
        driver.find_element(By.LINK_TEXT, target).click()
        wait.until(ec.presence_of_element_located((By.ID, "device-id")))
        check("device page shows the device id", driver.find_element(By.ID, "device-id").text == target)
        body = driver.find_element(By.TAG_NAME, "body").text
        check("device page shows the chain", "Certificate chain" in body and "CN=" in body)
        check("device page shows its timeline", "device.registered" in body)
        shot("device")

        # Audit: every API finding is on the page.
        driver.get(a.url + "/audit")
        wait.until(ec.presence_of_element_located((By.ID, "findings")))
        text = driver.find_element(By.ID, "findings").text
        for f in audit["findings"]:
            check("audit shows " + f["check"], f["check"] in text)
        check("audit has the demo's clone and client-id findings",
              "device_certificate_shared" in text and "conflicting_client_ids" in text, text[:300])
        shot("audit")

        # Live events: the EventSource connects (status text changes when it opens).
        driver.get(a.url + "/events")
        wait.until(ec.text_to_be_present_in_element((By.ID, "live-status"), "Live:"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")
        check("event feed lists events", len(rows) > 0, len(rows))
        shot("events")
    finally:
        driver.quit()

    report["ok"] = not failures
    report["failures"] = failures
    print(json.dumps(report))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
