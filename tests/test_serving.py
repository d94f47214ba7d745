"""The transcription server: its pieces in process (audio limits, PCM, the batching model worker),
then the real server (serve.py in a subprocess on 127.0.0.1) through real HTTP and WebSocket
clients, with real speech from data/librispeech_mini and data/digits and a tiny DeepSpeech2 of
seeded random weights saved with the project's checkpoint code.

Random weights make the transcripts meaningless, so the server is checked against an independent
reference: `transcribe.py`'s output for the same checkpoint and file.
"""
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mindaudio  # noqa: F401  (before mindspore)
from mindaudio.config import config_from_dict
from mindaudio.data.audio import load_audio
from mindaudio.data.features import log_spectrogram
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.inference import AcousticModel
from mindaudio.serving.audio import (BadAudio, Limits, RequestTooLarge, decode_upload, parse_stream_start,
                                     pcm_to_float)
from mindaudio.serving.worker import ModelWorker
from server_process import Server, post, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"ModelConfig": {"hidden_size": 32, "hidden_layers": 1}}
SHORT_ID, LONG_ID = "1089-134686-0001", "1988-24833-0001"  # 3.3 s and 7.9 s


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(config yaml, checkpoint, model in eval mode) of a hidden-32 DeepSpeech2 with seeded random weights."""
    return save_tiny_model(tmp_path_factory.mktemp("serving"), TINY)


@pytest.fixture(scope="module")
def speech(librispeech_mini, digits_corpus):
    """Real recordings: two LibriSpeech utterances (16 kHz FLAC) and two spoken digits (8 kHz FLAC)."""
    utterances = {u[0]: Path(u[1]) for u in extracted_utterances(librispeech_mini)}
    digits = sorted((digits_corpus / "recordings").glob("*.flac"))
    return {"short": utterances[SHORT_ID], "long": utterances[LONG_ID], "digit_a": digits[0], "digit_b": digits[-1]}


# ---------------------------------------------------------------- audio in process


def test_pcm_is_read_as_soundfile_reads_16_bit_audio(speech, tmp_path):
    samples, rate = sf.read(str(speech["short"]), dtype="int16")
    wav = tmp_path / "x.wav"
    sf.write(str(wav), samples, rate, subtype="PCM_16")
    np.testing.assert_array_equal(pcm_to_float(samples.astype("<i2").tobytes()), sf.read(str(wav), dtype="float32")[0])
    with pytest.raises(BadAudio, match="3 bytes"):
        pcm_to_float(b"abc")


def test_stream_start_messages():
    assert parse_stream_start({"sample_rate": 16000}) == 16000
    assert parse_stream_start({"sample_rate": 44100.0, "format": "pcm_s16le"}) == 44100
    for bad, words in [({}, "sample_rate"), ({"sample_rate": "fast"}, "whole number"),
                       ({"sample_rate": 100}, "outside"), ({"sample_rate": True}, "whole number"),
                       ({"sample_rate": 16000, "format": "f32"}, "not supported"), ([1], "first message")]:
        with pytest.raises(BadAudio, match=words):
            parse_stream_start(bad)


def test_uploads_read_as_transcribe_reads_files(speech, tmp_path):
    data = speech["digit_a"].read_bytes()
    signal = decode_upload(data, "d.flac", 16000, Limits())
    np.testing.assert_array_equal(signal, load_audio(speech["digit_a"], 16000))  # resampled 8 -> 16 kHz alike
    with pytest.raises(RequestTooLarge, match="over the limit of 0.1 s"):
        decode_upload(data, "d.flac", 16000, Limits(max_seconds=0.1))
    with pytest.raises(BadAudio, match="notes.txt: not a readable audio file"):
        decode_upload(b"hello, not audio" * 20, "notes.txt", 16000, Limits())
    with pytest.raises(BadAudio, match="empty"):
        decode_upload(b"", "x.wav", 16000, Limits())
    wav = io.BytesIO()
    sf.write(wav, np.zeros(8000, np.int16), 8000, format="WAV", subtype="PCM_16")
    with pytest.raises(BadAudio, match="cut.wav: truncated"):
        decode_upload(wav.getvalue()[:-4000], "cut.wav", 16000, Limits())
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("mindaudio-upload-*")), "temporary copies left"


# ---------------------------------------------------------------- the model worker in process


def test_worker_batches_together_and_gives_each_its_own_result(tiny_model, speech):
    """Eight clips submitted together run as one batch, each giving what the batch-1 model gives."""
    _, _, model = tiny_model
    spect = config_from_dict(TINY, source="tiny").SpectConfig
    clips = [load_audio(speech[name], 16000) for name in ("digit_a", "digit_b", "short")]
    features = [log_spectrogram(c[: 4000 + 1500 * i], spect) for i, c in enumerate(clips * 3)][:8]
    alone = AcousticModel(model)
    expected = [alone.log_probs(f) for f in features]
    worker = ModelWorker(model, max_batch=8, batch_wait=2.0)  # generous: every item is queued long before
    worker.start()
    try:
        results = asyncio.run(worker.log_probs(features))
        assert worker.stats.largest_batch == 8 and worker.stats.batches == 1
        for got, want in zip(results, expected):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-4)
            assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
        # A failing call reaches its caller; the worker goes on.
        with pytest.raises(ZeroDivisionError):
            asyncio.run(worker.call(lambda: 1 / 0))
        again = asyncio.run(worker.log_probs(features[:1]))[0]
        # Batch 1 is the batch-1 model; only float rounding may differ, as the server pads to 2 s
        # steps and a file alone is padded less (another shape, other kernel blocking).
        np.testing.assert_allclose(again, expected[0], rtol=0, atol=1e-6)
    finally:
        worker.stop()


# ---------------------------------------------------------------- the real server

MAX_UPLOAD_MB = 2
MAX_SECONDS = 30
CHUNK, CONTEXT = "4", "1"  # the 7.9 s utterance is then cut into windows, by both serve.py and transcribe.py


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    config, checkpoint, _ = tiny_model
    running = Server(config, checkpoint, tmp_path_factory.mktemp("server") / "serve.log", "--partial_interval", "0.05",
                     "--max_upload_mb", str(MAX_UPLOAD_MB), "--max_seconds", str(MAX_SECONDS),
                     "--chunk_seconds", CHUNK, "--context_seconds", CONTEXT)
    yield running
    running.stop()


def transcribe_py(config, checkpoint, paths):
    """transcribe.py --json's result per file, for the same checkpoint and chunking as the server."""
    proc = subprocess.run([sys.executable, str(REPO / "transcribe.py"), "-c", str(config), "--checkpoint",
                           str(checkpoint), "--json", "--chunk_seconds", CHUNK, "--context_seconds", CONTEXT,
                           *map(str, paths)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {Path(r["path"]).name: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.fixture(scope="module")
def upload_files(speech, tmp_path_factory):
    """The recordings, plus a stereo 44.1 kHz float WAV and a 16-bit 16 kHz WAV of the short one."""
    out = tmp_path_factory.mktemp("uploads")
    files = dict(speech)
    signal, rate = sf.read(str(speech["short"]), dtype="float32")
    import soxr
    stereo = soxr.resample(np.stack([signal, 0.5 * signal[::-1]], axis=1), rate, 44100).astype(np.float32)
    files["stereo44k"] = out / "stereo44k.wav"
    sf.write(str(files["stereo44k"]), stereo, 44100, subtype="FLOAT")
    files["wav16k"] = out / "short16k.wav"
    sf.write(str(files["wav16k"]), signal, rate, subtype="PCM_16")
    return files


@pytest.fixture(scope="module")
def reference(tiny_model, upload_files):
    config, checkpoint, _ = tiny_model
    return transcribe_py(config, checkpoint, upload_files.values())


def assert_same_result(got: dict, want: dict):
    assert got["transcript"] == want["transcript"]
    assert got["words"] == want["words"]
    assert got["duration"] == pytest.approx(want["duration"], abs=1e-3)


@pytest.mark.slow
def test_health_describes_the_model(server, tiny_model):
    config, checkpoint, model = tiny_model
    health = server.health()
    assert health["status"] == "ok" and health["device"] == "CPU"
    assert health["checkpoint"] == str(checkpoint) and health["config"] == str(config)
    assert health["parameters"] == sum(int(np.prod(p.shape)) for p in model.get_parameters())
    assert (health["hidden_size"], health["hidden_layers"], health["sample_rate"]) == (32, 1, 16000)
    assert health["labels"] == "".join(config_from_dict(TINY, source="tiny").labels)
    assert health["bidirectional"] is True and "re-decodes" in health["stream"]["partials"]
    assert health["limits"]["max_upload_bytes"] == MAX_UPLOAD_MB * 1024 * 1024
    with urllib.request.urlopen(server.base + "/", timeout=30) as response:
        page = response.read().decode()
    assert "<script>" in page and "/transcribe" in page and "/stream" in page


@pytest.mark.slow
@pytest.mark.parametrize("multipart", [False, True], ids=["raw-body", "multipart"])
def test_upload_gives_transcribe_py_result(server, upload_files, reference, multipart):
    for name, path in upload_files.items():
        status, body = post(server, path.read_bytes(), path.name, multipart=multipart)
        assert status == 200, body
        assert body["filename"] == path.name and body["processing_seconds"] > 0
        assert_same_result(body, reference[path.name])
    assert reference[upload_files["long"].name]["windows"] > 1  # the chunked path was compared too


def stream(server, samples: np.ndarray, rate: int, chunk_seconds=0.1, pause=0.02, end=True):
    """Send int16 `samples` over /stream in chunks; returns (messages received, close code)."""
    from websockets.sync.client import connect
    from websockets.exceptions import ConnectionClosed

    messages = []
    with connect(f"ws://127.0.0.1:{server.port}/stream", open_timeout=60, close_timeout=10) as ws:
        ws.send(json.dumps({"sample_rate": rate, "format": "pcm_s16le"}))
        messages.append(json.loads(ws.recv(timeout=60)))
        step = max(1, int(rate * chunk_seconds))
        for start in range(0, len(samples), step):
            ws.send(samples[start:start + step].astype("<i2").tobytes())
            time.sleep(pause)
        if end:
            ws.send(json.dumps({"event": "end"}))
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=300)))
        except ConnectionClosed as closed:
            return messages, closed.rcvd.code if closed.rcvd else None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wav16k", "digit_a"])
def test_stream_final_equals_the_upload(server, upload_files, name):
    """16-bit PCM streamed at the file's own rate (16 kHz; 8 kHz for the digit, resampled by the
    server) gives partials, then the transcript an upload of the same file gives."""
    path = upload_files[name]
    samples, rate = sf.read(str(path), dtype="int16")
    status, uploaded = post(server, path.read_bytes(), path.name)
    assert status == 200
    messages, code = stream(server, samples, rate, pause=0.06)
    assert code == 1000
    assert messages[0]["event"] == "ready" and messages[0]["sample_rate"] == rate
    partials = [m["partial"] for m in messages if "partial" in m]
    assert partials and all(isinstance(p, str) for p in partials)
    final = messages[-1]
    assert "final" in final, messages
    assert_same_result({"transcript": final["final"], "words": final["words"], "duration": final["duration"]},
                       uploaded)


def assert_still_serves(server, upload_files, reference):
    status, body = post(server, upload_files["digit_b"].read_bytes(), "again.flac")
    assert status == 200
    assert_same_result(body, reference[upload_files["digit_b"].name])


@pytest.mark.slow
def test_upload_errors_are_json_and_the_server_goes_on(server, upload_files, reference, tmp_path):
    too_big = b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
    status, body = post(server, too_big, "big.wav")
    assert status == 413 and "over the limit" in body["error"]
    long_wav = io.BytesIO()  # 40 s at 8 kHz: 640 kB, under the size limit but over the duration limit
    sf.write(long_wav, np.zeros(8000 * 40, np.int16), 8000, format="WAV", subtype="PCM_16")
    status, body = post(server, long_wav.getvalue(), "long.wav")
    assert status == 413 and "long.wav" in body["error"] and f"limit of {MAX_SECONDS} s" in body["error"]
    status, body = post(server, b"certainly not audio" * 50, "notes.txt")
    assert status == 400 and body["error"].startswith("notes.txt: not a readable audio file")
    status, body = post(server, upload_files["wav16k"].read_bytes()[:-20000], "cut.wav")
    assert status == 400 and "cut.wav: truncated" in body["error"]
    status, body = post(server, b"", "nothing.wav")
    assert status == 400 and "empty" in body["error"]
    tiny = io.BytesIO()
    sf.write(tiny, np.zeros(100, np.int16), 16000, format="WAV", subtype="PCM_16")
    status, body = post(server, tiny.getvalue(), "blip.wav")
    assert status == 400 and "too short" in body["error"]
    form = b'--b0undary\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b0undary--\r\n'
    request = urllib.request.Request(server.base + "/transcribe", data=form, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400 and 'field named "file"' in json.load(refused.value)["error"]
    assert_still_serves(server, upload_files, reference)


def stream_error(server, first, then=()):
    """Open /stream, send `first` and `then` (text or bytes), return (error message, close code)."""
    from websockets.sync.client import connect
    from websockets.exceptions import ConnectionClosed

    with connect(f"ws://127.0.0.1:{server.port}/stream", open_timeout=60) as ws:
        ws.send(first)
        messages = []
        try:
            for message in then:
                reply = json.loads(ws.recv(timeout=60))
                messages.append(reply)
                ws.send(message)
            while True:
                messages.append(json.loads(ws.recv(timeout=60)))
        except ConnectionClosed as closed:
            errors = [m["error"] for m in messages if "error" in m]
            return (errors[0] if errors else None), (closed.rcvd.code if closed.rcvd else None)


@pytest.mark.slow
def test_stream_errors_are_named_and_the_server_goes_on(server, upload_files, reference):
    start = json.dumps({"sample_rate": 16000})
    cases = [
        (("{not json",), "not JSON", 1008),
        ((json.dumps({"rate": 16000}),), "sample_rate", 1008),
        ((json.dumps({"sample_rate": 50}),), "outside", 1008),
        ((json.dumps({"sample_rate": "16k"}),), "whole number", 1008),
        ((b"\x00\x01" * 100,), "must be text", 1008),
        ((start, b"\x00\x01\x02"), "3 bytes", 1008),
        ((start, "hello"), "not JSON", 1008),
        ((start, json.dumps({"event": "pause"})), "unknown message", 1008),
        ((start, b"\x00\x00" * 600_000), "over the limit", 1009),  # 1.2 MB: one message over 1 MiB
    ]
    for (first, *then), words, code in cases:
        error, closed = stream_error(server, first, then)
        if words == "over the limit":  # the message is over max_message_bytes: the WebSocket layer refuses it
            assert closed == 1009
            continue
        assert error is not None and words in error, (first, then, error)
        assert closed == code, (first, then, closed)
    # Over the duration limit in messages each under the size limit:
    samples = np.zeros(16000 * (MAX_SECONDS + 2), np.int16)
    messages, closed = stream(server, samples, 16000, chunk_seconds=2.0, pause=0.0, end=False)
    assert closed == 1009 and "over the limit" in messages[-1]["error"]
    assert server.health()["active_streams"] == 0
    assert_still_serves(server, upload_files, reference)


@pytest.mark.slow
def test_clients_that_vanish_mid_stream_or_mid_upload_free_their_state(server, upload_files, reference):
    from websockets.sync.client import connect

    samples, rate = sf.read(str(upload_files["wav16k"]), dtype="int16")
    for _ in range(3):
        ws = connect(f"ws://127.0.0.1:{server.port}/stream", open_timeout=60)
        ws.send(json.dumps({"sample_rate": rate}))
        ws.recv(timeout=60)
        for start in range(0, len(samples) // 2, 1600):
            ws.send(samples[start:start + 1600].astype("<i2").tobytes())
            time.sleep(0.01)
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a closing handshake
        ws.socket.close()
    for _ in range(3):  # and uploads cut off halfway
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
            raw.sendall(b"POST /transcribe?filename=half.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/octet-stream\r\nContent-Length: 500000\r\n\r\n" + b"\0" * 100_000)
    for _ in range(600):  # the server notices the dead connections (bounded wait, no timing asserted)
        if server.health()["active_streams"] == 0:
            break
        time.sleep(0.1)
    assert server.health()["active_streams"] == 0
    assert_still_serves(server, upload_files, reference)
    assert "Traceback" not in server.output()  # nothing was taken for a bug


@pytest.mark.slow
def test_concurrent_uploads_and_streams_all_correct(server, upload_files, reference):
    names = ["digit_a", "digit_b", "short", "wav16k", "stereo44k", "long", "digit_b", "digit_a"]

    def upload(name):
        path = upload_files[name]
        return name, post(server, path.read_bytes(), path.name)

    def streamed(name):
        samples, rate = sf.read(str(upload_files[name]), dtype="int16")
        return name, stream(server, samples, rate, chunk_seconds=0.25, pause=0.01)

    with ThreadPoolExecutor(max_workers=len(names) + 2) as pool:
        uploads = [pool.submit(upload, n) for n in names]
        streams = [pool.submit(streamed, n) for n in ("digit_a", "wav16k")]
        for future in uploads:
            name, (status, body) = future.result()
            assert status == 200, body
            assert_same_result(body, reference[upload_files[name].name])
        for future in streams:
            name, (messages, code) = future.result()
            assert code == 1000 and "final" in messages[-1]
            assert messages[-1]["final"] == reference[upload_files[name].name]["transcript"]
    health = server.health()
    assert health["active_streams"] == 0 and health["queued"] == 0


# ---------------------------------------------------------------- a streaming recogniser behind the live interface


class WholeSoFarRecogniser:
    """A real incremental recogniser for the adapter's test: keeps the samples fed so far and runs
    the model on them at each feed (on whatever thread calls it), greedy-decoding a partial."""

    def __init__(self, model, spect, decoder):
        self.model, self.spect, self.decoder = AcousticModel(model), spect, decoder
        self.samples, self.threads = [], set()

    def _decode(self):
        signal = np.concatenate(self.samples)
        return self.decoder.decode(self.model.log_probs(log_spectrogram(signal, self.spect)))

    def feed(self, samples):
        self.threads.add(threading.current_thread().name)
        self.samples.append(samples)
        return self._decode().text if sum(s.size for s in self.samples) >= 400 else None

    def finish(self):
        self.threads.add(threading.current_thread().name)
        return self._decode()


def drive_session(sessions, samples, rate: int, chunk: int, partials: list):
    """Run one live session of `sessions` (a SessionFactory) on int16 `samples` at `rate`, fed
    `chunk` samples at a time as 16-bit PCM; partial transcripts go to `partials`. Returns the
    session's final Recognition."""
    async def run():
        async def sink(text):
            partials.append(text)
        session = sessions(rate, sink, Limits())
        for start in range(0, len(samples), chunk):
            await session.feed(pcm_to_float(samples[start:start + chunk].astype("<i2").tobytes()))
        final = await session.finish()
        await session.close()
        return final

    return asyncio.run(run())


def test_a_streaming_recogniser_plugs_into_live_sessions(tiny_model, speech):
    """IncrementalSession resamples the client's PCM to the model's rate, drives the recogniser on
    the model worker's thread, passes its partials on, and turns its final Hypothesis into words."""
    from mindaudio.decoding.select import build_decoder
    from mindaudio.serving.live import incremental_factory
    from mindaudio.serving.recognition import Recognizer

    _, _, model = tiny_model
    config = config_from_dict(TINY, source="tiny")
    worker = ModelWorker(model)
    worker.start()
    recognizer = Recognizer(worker, config.SpectConfig, build_decoder(config))
    made = []

    def make():
        made.append(WholeSoFarRecogniser(model, config.SpectConfig, recognizer.decoder))
        return made[-1]

    samples, rate = sf.read(str(speech["digit_a"]), dtype="int16")  # 8 kHz: resampled to 16 kHz
    partials = []

    try:
        final = drive_session(incremental_factory(recognizer, make), samples, rate, 800, partials)
    finally:
        worker.stop()
        recognizer.close()
    recogniser = made[0]
    assert recogniser.threads == {"model-worker"}
    fed = np.concatenate(recogniser.samples)
    assert abs(fed.size - 2 * len(samples)) <= 2  # all of it, at 16 kHz
    assert partials and all(a != b for a, b in zip(partials, partials[1:]))  # changes only
    assert final.text == recogniser._decode().text
    assert final.duration == pytest.approx(len(samples) / rate)
    assert [w["word"] for w in final.words] == final.text.split()


# ---------------------------------------------------------------- serve.py's own mistakes: one line each


def run_serve(*args):
    return subprocess.run([sys.executable, str(REPO / "serve.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(proc, *names):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(str(n) in last for n in names), last


def test_serve_py_mistakes_end_in_one_line(tiny_model, tmp_path):
    config, checkpoint, _ = tiny_model
    missing = tmp_path / "nope.ckpt"
    assert_one_line_error(run_serve("-c", config, "--checkpoint", missing), missing)
    assert_one_line_error(run_serve("-c", config, "--checkpoint", checkpoint, "--max_seconds", "0"), "--max_seconds")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_one_line_error(run_serve("-c", config, "--checkpoint", checkpoint, "--port", port),
                              f"--port {port}", "in use")
    assert_one_line_error(run_serve("-c", config, "--checkpoint", checkpoint, "--host", "no.such.host.invalid"),
                          "--host no.such.host.invalid")


def test_a_streaming_model_is_served_by_the_streaming_recogniser(speech, tmp_path):
    """A unidirectional, fixed-normalisation checkpoint: serve.py's service drives each live stream
    with `mindaudio.streaming.StreamingRecogniser`, and its final transcript is the recogniser's
    own on the same samples."""
    from mindaudio.serving.service import build_service
    from mindaudio.streaming import build_streaming_recogniser

    streaming = {"ModelConfig": {"hidden_size": 32, "hidden_layers": 1, "bidirectional": False,
                                 "lookahead_context": 3},
                 "SpectConfig": {"normalisation": "fixed"}}
    config_path, checkpoint, _ = save_tiny_model(tmp_path, streaming)
    config = config_from_dict(streaming, source=str(config_path))
    service = build_service(config, str(checkpoint), "CPU")
    assert service.description["stream"]["partials"] == "incremental streaming recogniser"
    samples, rate = sf.read(str(speech["short"]), dtype="int16")  # 16 kHz: the model's rate
    partials = []

    try:
        final = drive_session(service.sessions, samples, rate, 2560, partials)  # 160 ms chunks
    finally:
        service.close()
    offline = build_streaming_recogniser(config, str(checkpoint))
    offline.feed(pcm_to_float(samples.astype("<i2").tobytes()))
    expected = offline.finish()
    assert expected and final.text == expected  # a random model still emits characters
    assert final.duration == pytest.approx(len(samples) / rate)
