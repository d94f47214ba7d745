"""serve.py run as a user runs it, for the tests: a subprocess on 127.0.0.1 with a tiny checkpoint."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def save_tiny_model(work: Path, config_dict: dict):
    """(config yaml, checkpoint, model in eval mode): a DeepSpeech2 of `config_dict` with seeded random
    weights, saved with the project's checkpoint code."""
    import mindaudio  # noqa: F401  (before mindspore)
    import mindspore as ms

    from mindaudio.checkpoint import save_atomic
    from mindaudio.config import config_from_dict
    from mindaudio.models.build import build_model

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config_path = work / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config_dict))
    model = build_model(config_from_dict(config_dict, source="tiny"), seed=4)
    checkpoint = work / "tiny.ckpt"
    save_atomic(str(checkpoint), [(p.name, p) for p in model.get_parameters()])
    model.set_train(False)
    return config_path, checkpoint, model


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """serve.py in a subprocess on 127.0.0.1, stopped (and its output kept) at the end."""

    def __init__(self, config, checkpoint, log_path, *extra):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w+")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "serve.py"), "-c", str(config), "--checkpoint", str(checkpoint),
             "--port", str(self.port), "--log_level", "warning", *extra],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):  # up to 5 minutes on a busy machine: MindSpore loads, the first graph compiles
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.process.returncode}:\n{self.output()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"serve.py did not answer:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def health(self) -> dict:
        with urllib.request.urlopen(self.base + "/health", timeout=30) as response:
            return json.load(response)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def post(server, data: bytes, filename="clip.flac", multipart=False):
    """(status, JSON body) of POST /transcribe with `data` as the raw body or as a multipart form."""
    headers = {"Content-Type": "application/octet-stream"}
    url = f"{server.base}/transcribe?filename={filename}"
    if multipart:
        boundary = uuid.uuid4().hex
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        url = f"{server.base}/transcribe"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


