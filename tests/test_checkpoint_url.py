"""Checkpoints given as http(s) URLs, against a real HTTP server on 127.0.0.1 (never the internet):
fetched once into the cache, resumed with a Range request after a dropped connection, reused
when the server is gone, and a one-line error naming the URL when it cannot be fetched."""
import os
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import mindaudio  # noqa: F401  (before mindspore)

from file_server import FileServer
from mindaudio.checkpoint import (CACHE_ENV, CheckpointDownloadError, CheckpointError, cached_path,
                                  load_checkpoint, load_model_weights, save_atomic)
from mindaudio.config import Config, check_files
from mindaudio.models.build import build_model


def small_model(seed):
    config = Config()
    config.ModelConfig.hidden_size = 16
    config.ModelConfig.hidden_layers = 1
    return build_model(config, seed=seed)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def published(tmp_path):
    """A real checkpoint written by MindSpore (through our atomic, CRC-carrying save)."""
    model = small_model(seed=4)
    path = save_atomic(str(tmp_path / "deepspeech2.ckpt"), [(p.name, p) for p in model.get_parameters()])
    weights = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    return open(path, "rb").read(), weights


def assert_weights(model, weights):
    for p in model.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), weights[p.name], err_msg=p.name)


def test_url_is_fetched_once_into_the_cache_then_reused_without_network(cache, published):
    body, weights = published
    server = FileServer({"/toolkits/deepspeech2.ckpt": body})
    url = server.url("/toolkits/deepspeech2.ckpt")
    try:
        model = small_model(seed=0)
        load_model_weights(model, url)
        assert_weights(model, weights)
    finally:
        server.stop()
    target = cached_path(url)
    assert target.parent == cache / "checkpoints"
    assert re.fullmatch(r"deepspeech2-[0-9a-f]{10}\.ckpt", target.name)
    assert target.read_bytes() == body
    assert not any(name.endswith(".part") for name in os.listdir(target.parent))
    assert len(server.requests) == 1
    # The server is gone: the next run reads the cached copy.
    again = small_model(seed=1)
    load_model_weights(again, url)
    assert_weights(again, weights)
    # Another URL with the same file name gets its own cache entry; every entry ends in .ckpt.
    assert cached_path(url.replace("/toolkits/", "/other/")) != target
    assert re.fullmatch(r"get_id_3-[0-9a-f]{10}\.ckpt", cached_path("https://example.invalid/get_id_3").name)
    assert re.fullmatch(r"model\.bin-[0-9a-f]{10}\.ckpt", cached_path("https://example.invalid/model.bin").name)


def test_dropped_download_resumes_with_a_range_request(cache, published):
    body, weights = published
    server = FileServer({"/ds2.ckpt": body})
    url = server.url("/ds2.ckpt")
    cut = len(body) // 3
    server.drop_after["/ds2.ckpt"] = cut
    try:
        with pytest.raises(CheckpointDownloadError) as err:
            load_checkpoint(url)
        message = str(err.value)
        assert url in message and "run again to resume" in message and "\n" not in message
        part = cached_path(url).with_name(cached_path(url).name + ".part")
        assert part.read_bytes() == body[:cut]
        assert not cached_path(url).exists()

        model = small_model(seed=0)
        load_model_weights(model, url)
    finally:
        server.stop()
    assert server.requests[-1] == ("/ds2.ckpt", f"bytes={cut}-")
    assert cached_path(url).read_bytes() == body
    assert not part.exists()
    assert_weights(model, weights)


def test_http_404_is_one_error_line_naming_the_url(cache):
    server = FileServer({})
    url = server.url("/missing/deepspeech2.ckpt")
    try:
        with pytest.raises(CheckpointError) as err:
            load_model_weights(small_model(seed=0), url)
    finally:
        server.stop()
    assert url in str(err.value) and "404" in str(err.value) and "\n" not in str(err.value)
    assert not cached_path(url).exists()


def test_refused_connection_is_an_error_naming_the_url(cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/deepspeech2.ckpt"  # nothing listens there now
    with pytest.raises(CheckpointDownloadError) as err:
        load_checkpoint(url)
    assert url in str(err.value) and "refused" in str(err.value).lower()


def test_a_corrupt_download_is_named_with_its_url_and_cache_file(cache, published):
    body, _ = published
    damaged = bytearray(body)
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(b ^ 0xFF for b in damaged[middle:middle + 64])
    server = FileServer({"/bad.ckpt": bytes(damaged)})
    url = server.url("/bad.ckpt")
    try:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(url)
    finally:
        server.stop()
    assert url in str(err.value) and str(cached_path(url)) in str(err.value) and "corrupt" in str(err.value)


def test_transcribe_reports_an_unreachable_checkpoint_url_in_one_line(cache, repo_root):
    server = FileServer({})
    url = server.url("/gone.ckpt")
    try:
        proc = subprocess.run([sys.executable, "transcribe.py", "-c", "configs/digits.yaml", "--checkpoint", url,
                               "never_read.wav"], cwd=repo_root, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, **{CACHE_ENV: str(cache)}))
    finally:
        server.stop()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert lines[-1].startswith("error: ") and url in lines[-1] and "404" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_url_keys_pass_the_file_check_but_manifests_do_not():
    from mindaudio.config import ConfigError

    config = Config()
    config.Pretrained_model = "https://download.example.invalid/deepspeech2.ckpt"
    config.CheckpointConfig.resume_from = "http://127.0.0.1:9/run.ckpt"
    check_files(config, ["Pretrained_model", "CheckpointConfig.resume_from"])
    config.TrainingConfig.train_manifest = "https://download.example.invalid/train.json"
    with pytest.raises(ConfigError, match="train_manifest"):
        check_files(config, ["TrainingConfig.train_manifest"])


def test_concurrent_processes_fetch_a_url_once(cache, published):
    """Two resolvers at once (as data-parallel ranks start): one downloads, the other waits for it."""
    from mindaudio.checkpoint import resolve_checkpoint

    body, _ = published
    second_request = threading.Event()

    def hold_the_first_transfer(path):
        # Hold the first transfer open so that an unlocked second resolver would overlap it.
        if len(server.requests) == 1:
            second_request.wait(timeout=3.0)
        else:
            second_request.set()

    server = FileServer({"/shared.ckpt": body}, before_reply=hold_the_first_transfer)
    url = server.url("/shared.ckpt")
    results = []
    try:
        workers = [threading.Thread(target=lambda: results.append(resolve_checkpoint(url, progress=False)))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        server.stop()
    assert [path for path, _ in server.requests] == ["/shared.ckpt"]
    assert results == [str(cached_path(url))] * 2
    assert cached_path(url).read_bytes() == body
