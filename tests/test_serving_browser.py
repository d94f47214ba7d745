"""The server's page in a real browser: Debian's headless Chromium driven by Selenium (its
chromedriver), against serve.py on 127.0.0.1. The page uploads a file and shows its transcript;
with Chromium's fake microphone playing a real recording, it streams it and shows partial
transcripts, then the final one.

SERVING_SCREENSHOT=FILE.png saves the page as it looks at the end. docs/serving.png was made so, with
a model that says words: SERVING_TEST_CONFIG, SERVING_TEST_CHECKPOINT and SERVING_TEST_AUDIO (a 16-bit
WAV, for the upload and the microphone) replace the tiny random model and the LibriSpeech utterance.
"""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mindaudio.data.librispeech import extracted_utterances
from server_process import Server, post, save_tiny_model

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SPEECH_ID = "1988-24833-0001"  # 7.9 s of LibriSpeech
TINY = {"ModelConfig": {"hidden_size": 32, "hidden_layers": 1}}

pytestmark = pytest.mark.slow

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"):
    # CI installs both (.ci/run); elsewhere: apt-get install chromium chromium-driver
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("browser")
    if os.environ.get("SERVING_TEST_CHECKPOINT"):
        config, checkpoint = os.environ["SERVING_TEST_CONFIG"], os.environ["SERVING_TEST_CHECKPOINT"]
    else:
        config, checkpoint, _ = save_tiny_model(work, TINY)
    running = Server(config, checkpoint, work / "serve.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def recording(librispeech_mini, tmp_path_factory):
    """A real utterance as a 16-bit WAV with a second of silence after it, for the fake microphone
    (Chromium plays it in a loop)."""
    if os.environ.get("SERVING_TEST_AUDIO"):
        return Path(os.environ["SERVING_TEST_AUDIO"])
    flac = {u[0]: u[1] for u in extracted_utterances(librispeech_mini)}[SPEECH_ID]
    signal, rate = sf.read(str(flac), dtype="int16")
    path = tmp_path_factory.mktemp("microphone") / "speech.wav"
    sf.write(str(path), np.concatenate([signal, np.zeros(rate, np.int16)]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(recording, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1000,700",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={recording}",
                 "--autoplay-policy=no-user-gesture-required"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, what, seconds=300):
    """Poll `condition(driver)` until it is truthy; fail naming `what` (and the page's status lines)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.2)
    status = [driver.find_element("id", i).text for i in ("upload-status", "live-status")]
    raise AssertionError(f"the page never showed {what}; status lines: {status}")


def test_page_uploads_a_file_and_streams_the_microphone(server, browser, recording, tmp_path):
    driver = browser
    driver.get(server.base + "/")
    wait_for(driver, lambda d: "parameters" in d.find_element("id", "model").text, "the model's description")

    # Upload: the page shows what the API answers for the same file.
    _, expected = post(server, recording.read_bytes(), recording.name)
    driver.find_element("id", "file").send_keys(str(recording))
    driver.find_element("id", "upload").click()
    wait_for(driver, lambda d: d.find_element("id", "upload-transcript").get_attribute("data-done"),
             "the upload's transcript")
    assert driver.find_element("id", "upload-transcript").text == expected["transcript"]
    assert recording.name in driver.find_element("id", "upload-status").text
    rows = driver.find_elements("css selector", "#upload-words tbody tr")
    assert len(rows) == len(expected["words"])

    # Microphone: partials while it records, then the final transcript after Stop.
    transcript = driver.find_element("id", "live-transcript")
    driver.find_element("id", "record").click()
    wait_for(driver, lambda d: int(transcript.get_attribute("data-partials")) >= 2, "two partial transcripts")
    assert transcript.get_attribute("data-state") == "partial"
    assert "partial" in transcript.get_attribute("class")
    sent = lambda d: d.find_element("id", "live-status").text  # noqa: E731
    wait_for(driver, lambda d: sent(d).startswith("recording") and float(sent(d).split()[1]) >= 4.0,
             "4 s of audio sent")
    driver.find_element("id", "stop").click()
    wait_for(driver, lambda d: transcript.get_attribute("data-state") == "final", "the final transcript")
    status = driver.find_element("id", "live-status").text
    assert status.startswith("final: ")
    seconds = float(status.split()[1])
    assert seconds >= 4.0  # the fake microphone's audio reached the server
    assert transcript.text.strip() and "partial" not in transcript.get_attribute("class")
    assert server.health()["active_streams"] == 0

    shot = tmp_path / "serving.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("SERVING_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SERVING_SCREENSHOT"])
