"""Real-time factor of transcribe.py's work at batch 1: wall seconds per second of audio.

Times `Transcriber.transcribe` (read, resample, features, model, decode) on real LibriSpeech audio
for a model size with random weights (speed does not depend on the weights): a short utterance
and a long recording made of several utterances, which is cut into chunk windows. The first pass
compiles the graphs and is reported apart; then each file is transcribed --repeats times and the
median is kept.

    python bench/transcribe_rtf.py --hidden 1024 --layers 5 [--decoder greedy|beam] [--lm LM.arpa]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

import mindaudio  # noqa: E402,F401  (before mindspore)
import mindspore as ms  # noqa: E402

from mindaudio.config import config_from_dict  # noqa: E402
from mindaudio.data.librispeech import extracted_utterances  # noqa: E402
from mindaudio.decoding.select import build_decoder  # noqa: E402
from mindaudio.inference import AcousticModel, Transcriber  # noqa: E402
from mindaudio.models.build import build_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--beam_width", type=int, default=64)
    parser.add_argument("--lm", default="")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk_seconds", type=float, default=20.0)
    parser.add_argument("--long_utterances", type=int, default=8, help="utterances joined into the long file")
    parser.add_argument("--librispeech", default=str(REPO / "data" / "librispeech_mini" / "LibriSpeech"),
                        help="an extracted LibriSpeech/ tree")
    args = parser.parse_args()

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config = config_from_dict({
        "ModelConfig": {"hidden_size": args.hidden, "hidden_layers": args.layers},
        "EvalConfig": {"decoder_type": args.decoder, "beam_width": args.beam_width, "lm_path": args.lm}},
        source="bench")
    model = build_model(config, seed=0)
    transcriber = Transcriber(AcousticModel(model), config.SpectConfig, build_decoder(config),
                              chunk_seconds=args.chunk_seconds)
    utterances = extracted_utterances(Path(args.librispeech))
    by_id = {u.id: u for u in utterances}
    with tempfile.TemporaryDirectory() as tmp:
        long_path = os.path.join(tmp, "long.flac")
        signal = np.concatenate([sf.read(u.audio_path, dtype="float32")[0] for u in utterances[: args.long_utterances]])
        sf.write(long_path, signal, 16000)
        files = {"short": by_id["1988-24833-0001"].audio_path, "long": long_path}
        rows = {}
        for name, path in files.items():
            start = time.perf_counter()
            first = transcriber.transcribe(path)
            first_seconds = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                transcriber.transcribe(path)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            rows[name] = {"audio_seconds": round(first.duration, 2), "windows": first.windows,
                          "first_pass_seconds": round(first_seconds, 2), "median_seconds": round(median, 3),
                          "rtf": round(median / first.duration, 4)}
    result = {"model": f"H{args.hidden}x{args.layers}", "decoder": transcriber.decoder.describe(),
              "chunk_seconds": args.chunk_seconds, "load_average": os.getloadavg(), "files": rows}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
