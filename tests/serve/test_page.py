"""The demo page in a real browser: Debian's chromium + chromium-driver, driven by selenium, against a
real server process. Skipped (with the reason) where they are not installed; .ci/run installs them."""
from __future__ import annotations

import base64
import io
import shutil

import pytest
import soundfile as sf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]

FETCH_BLOB = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {
  let s = ""; const u = new Uint8Array(b);
  for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode.apply(null, u.subarray(i, i + 8192));
  done(btoa(s));
}).catch(e => done("error: " + e));
"""


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", "--window-size=1000,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)  # no Selenium Manager
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(condition))


def test_type_upload_synthesize_and_play(browser, server, tiny_system):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    browser.find_element(By.ID, "text").send_keys("Hello from a real browser.")
    browser.find_element(By.ID, "reference").send_keys(str(tiny_system["prompt"]))
    browser.find_element(By.ID, "synthesize").click()
    wait_for(browser, "const a = document.getElementById('result'); return a.src.startsWith('blob:') && a.readyState >= 1")
    audio = browser.execute_script(
        "const a = document.getElementById('result');"
        "return {src: a.src, duration: a.duration, tokens: a.dataset.tokens, error: a.error && a.error.code,"
        " canPlay: a.canPlayType('audio/wav'), download: document.getElementById('download').href};")
    assert audio["error"] is None and audio["canPlay"] and audio["download"] == audio["src"]
    wav, sr = sf.read(io.BytesIO(base64.b64decode(browser.execute_async_script(FETCH_BLOB, audio["src"]))))
    n_tokens = int(audio["tokens"])
    assert sr == 24000 and n_tokens > 0 and len(wav) == n_tokens * 960  # tokens / 25 s
    assert audio["duration"] == pytest.approx(n_tokens / 25, abs=1e-3)
    browser.execute_script("document.getElementById('result').play()")  # playable: time advances, no error
    wait_for(browser, "const a = document.getElementById('result'); return a.currentTime > 0 || a.ended", 20)
    assert browser.execute_script("return document.getElementById('result').error") is None
    status = browser.find_element(By.ID, "status").text
    assert "RTF" in status and "error" not in browser.find_element(By.ID, "status").get_attribute("class")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 1


def test_microphone_clip_registered_as_a_voice_then_used(browser, server):
    """Chromium's fake microphone (a beep) records a clip; it is registered, listed and spoken with."""
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    browser.find_element(By.ID, "record").click()
    wait_for(browser, "return document.getElementById('record').textContent.startsWith('Stop')", 10)
    browser.execute_async_script("setTimeout(arguments[0], 1500)")
    browser.find_element(By.ID, "record").click()
    wait_for(browser, "return document.getElementById('clip').textContent.includes('microphone')", 20)
    browser.find_element(By.ID, "voice_name").send_keys("mic")
    browser.find_element(By.ID, "register").click()
    wait_for(browser, "return document.getElementById('status').textContent.startsWith('registered voice mic')", 60)
    assert "mic (" in browser.find_element(By.ID, "voice").text
    browser.find_element(By.ID, "text").send_keys("Spoken by the microphone voice.")
    browser.find_element(By.ID, "synthesize").click()
    wait_for(browser, "const a = document.getElementById('result'); return a.src.startsWith('blob:') && a.readyState >= 1")
    assert "RTF" in browser.find_element(By.ID, "status").text


def test_the_api_docs_render_without_a_network(browser, server):
    """/docs loads Swagger UI from this server (no CDN: this machine reaches only 127.0.0.1)."""
    browser.get(server.url + "/docs")
    wait_for(browser, "return [...document.querySelectorAll('.opblock-summary-path')]"
             ".some(e => e.textContent.trim() === '/v1/tts')", 30)
