"""Streaming latency at batch 1: algorithmic latency and compute per chunk of the streaming
recogniser (mindaudio/streaming.py) for the small and the full unidirectional model.

- algorithmic latency: audio an output frame waits for beyond its own centre (the lookahead's
  frames traced back through the convolutions, plus half a window), plus the chunk length (a
  chunk's first sample waits for its last before anything runs);
- compute per chunk: wall time of `feed()` for one chunk of real LibriSpeech speech (features,
  convolutions, LSTM steps, lookahead, classifier, greedy partial), median and 90th percentile
  over the chunks of the recording, after one warm-up pass; the final `finish()` apart;
- CPU time per chunk (all threads of the process): on a shared machine the wall time includes
  waiting for a core, the CPU time does not;
- real-time factor: total compute (wall) / audio duration.
Weights are random (speed does not depend on them). Real time needs compute per chunk < chunk.

    python bench/stream_latency.py                       # small and full, 160 ms chunks
    python bench/stream_latency.py --chunk_ms 80 --models full --json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

import mindaudio  # noqa: E402,F401  (before mindspore)
import mindspore as ms  # noqa: E402

from mindaudio.config import config_from_dict  # noqa: E402
from mindaudio.data.statistics import signal_statistics  # noqa: E402
from mindaudio.models.build import build_model  # noqa: E402
from mindaudio.streaming import StreamingRecogniser, algorithmic_latency_seconds  # noqa: E402

MODELS = {"small": (256, 2), "full": (1024, 5)}


def speech(seconds: float) -> np.ndarray:
    """Real 16 kHz speech from data/librispeech_mini, utterances joined up to `seconds`."""
    paths = sorted((REPO / "data" / "librispeech_mini").rglob("*.flac"))
    pieces, total = [], 0
    for path in paths:
        signal = sf.read(str(path), dtype="float32")[0]
        pieces.append(signal)
        total += signal.size
        if total >= seconds * 16000:
            break
    return np.concatenate(pieces)[: int(seconds * 16000)]


def measure(name: str, hidden: int, layers: int, chunk_ms: float, signal: np.ndarray, lookahead: int) -> dict:
    config = config_from_dict({"ModelConfig": {"hidden_size": hidden, "hidden_layers": layers,
                                               "bidirectional": False, "lookahead_context": lookahead},
                               "SpectConfig": {"normalisation": "fixed"}}, source="bench")
    model = build_model(config, seed=0, feature_statistics=signal_statistics([signal], config.SpectConfig))
    recogniser = StreamingRecogniser(model, config.SpectConfig)
    chunk = int(round(chunk_ms / 1000 * config.SpectConfig.sample_rate))
    pieces = [signal[i:i + chunk] for i in range(0, signal.size, chunk)]
    for piece in pieces:  # warm-up: first calls of each primitive and shape
        recogniser.feed(piece)
    recogniser.finish()
    recogniser.reset()
    times, cpu_times = [], []
    for piece in pieces:
        start, cpu_start = time.perf_counter(), time.process_time()
        recogniser.feed(piece)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    start = time.perf_counter()
    recogniser.finish()
    finish_seconds = time.perf_counter() - start
    # Whole-chunk figures only (the last chunk may be short).
    full = sorted(times[:-1]) if len(times) > 1 else times
    audio_seconds = signal.size / config.SpectConfig.sample_rate
    lookahead_seconds = algorithmic_latency_seconds(model, config.SpectConfig)
    return {"model": name, "size": f"H{hidden}x{layers}", "lookahead_context": lookahead,
            "chunk_ms": chunk_ms, "algorithmic_latency_ms": round(1000 * (lookahead_seconds + chunk_ms / 1000), 1),
            "lookahead_latency_ms": round(1000 * lookahead_seconds, 1),
            "compute_median_ms": round(1000 * statistics.median(full), 1),
            "compute_p90_ms": round(1000 * full[int(0.9 * (len(full) - 1))], 1),
            "compute_max_ms": round(1000 * full[-1], 1),
            "cpu_median_ms": round(1000 * statistics.median(cpu_times[:-1] or cpu_times), 1),
            "finish_ms": round(1000 * finish_seconds, 1),
            "rtf": round((sum(times) + finish_seconds) / audio_seconds, 3),
            "audio_seconds": round(audio_seconds, 2), "chunks": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,full", help="comma-separated: small (H256x2), full (H1024x5)")
    parser.add_argument("--chunk_ms", type=float, default=160.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="audio streamed per model")
    parser.add_argument("--lookahead", type=int, default=20, help="lookahead_context (output frames)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    signal = speech(args.seconds)
    rows = [measure(name, *MODELS[name], args.chunk_ms, signal, args.lookahead) for name in args.models.split(",")]
    if args.json:
        print(json.dumps({"rows": rows, "load_average": os.getloadavg(), "machine": platform.processor()}))
        return 0
    print(f"streaming at batch 1, {args.chunk_ms:g} ms chunks of {rows[0]['audio_seconds']} s of LibriSpeech; "
          f"load average {os.getloadavg()[0]:.2f}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}")
    header = ("model", "lookahead", "algorithmic latency", "compute/chunk median", "p90", "max",
              "CPU time/chunk median", "finish", "RTF")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} {r['size']} | {r['lookahead_context']} frames = {r['lookahead_latency_ms']:g} ms "
              f"| {r['algorithmic_latency_ms']:g} ms | {r['compute_median_ms']:g} ms | {r['compute_p90_ms']:g} ms "
              f"| {r['compute_max_ms']:g} ms | {r['cpu_median_ms']:g} ms | {r['finish_ms']:g} ms | {r['rtf']:g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
