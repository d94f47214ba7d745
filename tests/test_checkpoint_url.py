"""Checkpoints given as http(s) URLs, against a real HTTP server on 127.0.0.1 (never the internet):
fetched once into the cache, resumed with a Range request after a dropped connection, reused
when the server is gone, and a one-line error naming the URL when it cannot be fetched."""
import http.server
import os
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import mindaudio  # noqa: F401  (before mindspore)

from mindaudio.checkpoint import (CACHE_ENV, CheckpointDownloadError, CheckpointError, cached_path,
                                  load_checkpoint, load_model_weights, save_atomic)
from mindaudio.config import Config, check_files
from mindaudio.models.build import build_model


def small_model(seed):
    config = Config()
    config.ModelConfig.hidden_size = 16
    config.ModelConfig.hidden_layers = 1
    return build_model(config, seed=seed)


class CheckpointServer:
    """Serves `files` (URL path -> bytes) with Range support; `drop_after[path] = n` makes the next
    request for that path send only n bytes of the body and close the connection."""

    def __init__(self, files):
        self.files = dict(files)
        self.drop_after = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


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
    server = CheckpointServer({"/toolkits/deepspeech2.ckpt": body})
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
    server = CheckpointServer({"/ds2.ckpt": body})
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
    server = CheckpointServer({})
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
    server = CheckpointServer({"/bad.ckpt": bytes(damaged)})
    url = server.url("/bad.ckpt")
    try:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(url)
    finally:
        server.stop()
    assert url in str(err.value) and str(cached_path(url)) in str(err.value) and "corrupt" in str(err.value)


def test_transcribe_reports_an_unreachable_checkpoint_url_in_one_line(cache, repo_root):
    server = CheckpointServer({})
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
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if len(requests) == 1:
                # Hold the first transfer open so that an unlocked second resolver would overlap it.
                second_request.wait(timeout=3.0)
            else:
                second_request.set()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/shared.ckpt"
    results = []
    try:
        workers = [threading.Thread(target=lambda: results.append(resolve_checkpoint(url, progress=False)))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        httpd.shutdown()
        httpd.server_close()
        serving.join()
    assert requests == ["/shared.ckpt"]
    assert results == [str(cached_path(url))] * 2
    assert cached_path(url).read_bytes() == body
