"""Load benchmark of the transcription server: concurrent clients uploading real speech to serve.py on 127.0.0.1.

    python bench/serve_load.py                 # 8 clients for 60 s (after 30 s unmeasured), digits model
    python bench/serve_load.py --quick         # 4 clients for 10 s (after 5 s)
    python bench/serve_load.py --max_batch 1   # the same load without batching, to compare

Starts serve.py in a subprocess (a randomly initialised checkpoint of the config's size unless
--checkpoint is given: the compute is the same as a trained model's), sends each file once to
compile its shapes, runs the same load unmeasured for `--warm_seconds` (so that the batch shapes
compile), then runs `--clients` threads, each posting the next recording of a fixed mix
(spoken digits from data/digits and LibriSpeech utterances from data/librispeech_mini) as soon as
its previous answer arrives, for `--seconds`. Every answer must be HTTP 200 with the transcript
the warm-up gave for that file (any other outcome is counted as an error). Prints requests/s,
audio seconds per second, p50/p95/max latency, errors, and the server's resident memory after the
warm-up, half-way, at the end and at its peak (sampled every 0.5 s), the batches the worker ran,
and how many graph shapes it had compiled before and after (each new batch shape costs memory once). Sends
traffic only to 127.0.0.1 and stops by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "data" / "digits" / "recordings"
LIBRISPEECH = REPO / "data" / "librispeech_mini" / "LibriSpeech"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.process_memory import rss_mb  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def random_checkpoint(config_path: str, out_dir: str) -> str:
    """A checkpoint of `config_path`'s model with seeded random weights (saved with the project's code)."""
    import mindaudio  # noqa: F401  (before mindspore)
    from mindaudio.checkpoint import save_atomic
    from mindaudio.config import load_config
    from mindaudio.models.build import build_model

    model = build_model(load_config(config_path, {}), seed=0)
    path = os.path.join(out_dir, "random.ckpt")
    save_atomic(path, [(p.name, p) for p in model.get_parameters()])
    return path


def request_mix(digits: int, utterances: int):
    """(name, bytes, seconds) of `digits` spoken digits and `utterances` LibriSpeech utterances."""
    digit_files = sorted(DIGITS.glob("*.flac"))
    step = max(1, len(digit_files) // max(digits, 1))
    chosen = digit_files[::step][:digits] + sorted(LIBRISPEECH.rglob("*.flac"))[:utterances]
    return [(p.name, p.read_bytes(), soundfile.info(str(p)).duration) for p in chosen]


def post(base: str, name: str, data: bytes, timeout: float = 300):
    request = urllib.request.Request(f"{base}/transcribe?filename={name}", data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, {"error": err.read()[:200].decode(errors="replace")}
    except OSError as err:
        return 0, {"error": str(err)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default=str(REPO / "configs" / "digits.yaml"))
    parser.add_argument("--checkpoint", default=None, help="default: random weights of the config's size")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 8; --quick 4)")
    parser.add_argument("--seconds", type=float, default=None, help="load duration (default 60; --quick 10)")
    parser.add_argument("--digits", type=int, default=12, help="spoken digits in the request mix")
    parser.add_argument("--utterances", type=int, default=2, help="LibriSpeech utterances in the request mix")
    parser.add_argument("--max_batch", type=int, default=8, help="serve.py --max_batch")
    parser.add_argument("--warm_seconds", type=float, default=None,
                        help="the same load first, unmeasured, so that batch shapes compile (default 30; --quick 5)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    clients = args.clients or (4 if args.quick else 8)
    duration = args.seconds or (10.0 if args.quick else 60.0)
    if args.warm_seconds is None:
        args.warm_seconds = 5.0 if args.quick else 30.0

    mix = request_mix(args.digits, args.utterances)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as work:
        checkpoint = args.checkpoint or random_checkpoint(args.config, work)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(os.path.join(work, "serve.log"), "w+")
        server = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "-c", args.config, "--checkpoint",
                                   checkpoint, "--port", str(port), "--log_level", "warning",
                                   "--max_batch", str(args.max_batch)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            return run_load(args, base, server, mix, clients, duration, log)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def measure(base, mix, expected, clients, duration, start=True):
    """`clients` threads posting the mix for `duration` seconds (from their start): (latencies,
    errors, [audio seconds], threads). start=False: the threads are returned unstarted; else they
    are run to the end here."""
    latencies, errors, audio = [], [], [0.0]
    lock = threading.Lock()
    stop_at = []

    def client(index: int):
        if not stop_at:
            stop_at.append(time.monotonic() + duration)
        i = index
        while time.monotonic() < stop_at[0]:
            name, data, seconds = mix[i % len(mix)]
            i += 1
            begun = time.perf_counter()
            status, body = post(base, name, data)
            elapsed = time.perf_counter() - begun
            with lock:
                if status == 200 and body.get("transcript") == expected[name]:
                    latencies.append(elapsed)
                    audio[0] += seconds
                else:
                    errors.append(f"{name}: {status} {str(body)[:120]}")

    threads = [threading.Thread(target=client, args=(k * 3,)) for k in range(clients)]
    if start and duration > 0:
        [t.start() for t in threads]
        [t.join() for t in threads]
        if errors:
            sys.exit(f"warm-up load failed: {errors[:3]}")
    return latencies, errors, audio, threads


def run_load(args, base, server, mix, clients, duration, log) -> int:
    for _ in range(1200):
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"serve.py exited with {server.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=10):
                break
        except OSError:
            time.sleep(0.5)
    expected = {}
    for name, data, _ in mix:  # warm-up: compiles the shapes, gives each file's transcript
        status, body = post(base, name, data)
        if status != 200:
            sys.exit(f"warm-up request {name} failed: {status} {body}")
        expected[name] = body["transcript"]
    # Warm up the batch shapes too: the same load, not counted, for --warm_seconds (each new
    # batch shape is compiled once and keeps its memory; the measured part should see few new ones).
    measure(base, mix, expected, clients, args.warm_seconds)
    with urllib.request.urlopen(base + "/health", timeout=10) as response:
        before = json.load(response)["worker"]

    rss_start = rss_mb(server.pid)
    rss_peak = rss_start
    latencies, errors, audio, threads = measure(base, mix, expected, clients, duration, start=False)
    started = time.perf_counter()
    [t.start() for t in threads]

    rss_mid = None
    while any(t.is_alive() for t in threads):
        rss_peak = max(rss_peak, rss_mb(server.pid))
        if rss_mid is None and time.perf_counter() - started >= duration / 2:
            rss_mid = rss_mb(server.pid)
        time.sleep(0.5)
    wall = time.perf_counter() - started
    rss_end = rss_mb(server.pid)
    with urllib.request.urlopen(base + "/health", timeout=10) as response:
        health = json.load(response)
    after = health["worker"]
    batches = after["batches"] - before["batches"]
    items = after["items"] - before["items"]

    lat = np.array(latencies) if latencies else np.array([np.nan])
    result = {
        "clients": clients, "seconds": round(wall, 1), "requests": len(latencies), "errors": len(errors),
        "requests_per_s": round(len(latencies) / wall, 2), "audio_s_per_s": round(audio[0] / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
        "p95_ms": round(float(np.percentile(lat, 95)) * 1000, 1),
        "max_ms": round(float(lat.max()) * 1000, 1),
        "rss_start_mb": round(rss_start, 1), "rss_mid_mb": round(rss_mid or rss_end, 1),
        "rss_end_mb": round(rss_end, 1), "rss_peak_mb": round(rss_peak, 1),
        "compiled_shapes_start": before["compiled_shapes"], "compiled_shapes_end": after["compiled_shapes"],
        "model_batches": batches, "mean_batch": round(items / batches, 2) if batches else 0.0,
        "max_batch": args.max_batch, "largest_batch": after["largest_batch"],
        "model": f"{health['hidden_layers']} x {health['hidden_size']} LSTM, {health['parameters']} parameters",
        "mix": f"{args.digits} digits + {args.utterances} LibriSpeech utterances, "
               f"{sum(s for *_, s in mix) / len(mix):.2f} s mean",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
    }
    print(f"serve_load: {result['model']} ({args.config}), request mix {result['mix']}; {result['machine']}")
    print()
    print("| clients | seconds | requests | req/s | audio s/s | p50 ms | p95 ms | max ms | errors "
          "| RSS start / mid / end / peak MB | batches | mean batch | graph shapes start / end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {clients} | {result['seconds']} | {result['requests']} | {result['requests_per_s']} "
          f"| {result['audio_s_per_s']} | {result['p50_ms']} | {result['p95_ms']} | {result['max_ms']} "
          f"| {result['errors']} | {result['rss_start_mb']} / {result['rss_mid_mb']} / {result['rss_end_mb']} / "
          f"{result['rss_peak_mb']} | {batches} | {result['mean_batch']} "
          f"| {before['compiled_shapes']} / {after['compiled_shapes']} |")
    for line in errors[:10]:
        print(f"error: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
