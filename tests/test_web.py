"""The web page end to end: headless Chromium types, clicks and reads the translation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import running
from seq2seq.serve import create_app
from seq2seq.translator import Translator

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SENTENCE, BEAM, NBEST, ALPHA = "Where is the station?", 4, 3, 1.5


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1000,800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def test_page_shows_the_apis_translation_and_nbest(browser, trained_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(Translator.load(trained_run / "best.pt", device="cpu"))
    with running(app) as url:
        api = httpx.post(f"{url}/translate", timeout=30, json={
            "sentences": [SENTENCE], "beam": BEAM, "nbest": NBEST,
            "length_penalty": ALPHA}).json()["translations"][0]
        browser.get(url + "/")
        browser.find_element(By.ID, "source").send_keys(SENTENCE)
        for name, value in (("beam", BEAM), ("nbest", NBEST), ("length_penalty", ALPHA)):
            box = browser.find_element(By.ID, name)
            box.clear()
            box.send_keys(str(value))
        browser.find_element(By.ID, "translate").click()
        shown = WebDriverWait(browser, 30).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, "#results .translation")))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results table.nbest tr")
        screenshot = tmp_path / "web.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
    assert shown.text == api["text"]
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == [
        h["text"] for h in api["nbest"]]
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == [
        f"{h['score']:.3f}" for h in api["nbest"]]
    assert browser.find_element(By.ID, "status").text == ""
