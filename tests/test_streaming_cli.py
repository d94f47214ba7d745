"""`transcribe.py --stream`, run as a user runs it, on a tiny randomly initialised streaming model:
partial transcripts that change as audio arrives, a final one equal to the offline greedy result,
and a clear refusal for a model that cannot stream."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits_streaming.yaml"
TINY = {"ModelConfig.hidden_size": "16", "ModelConfig.hidden_layers": "1"}


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "transcribe.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _overrides():
    return [item for key, value in TINY.items() for item in (f"--{key}", value)]


@pytest.fixture
def recording(tmp_path, digits_corpus):
    """About 3 s of real speech: theo saying ten digits, one after the other (8 kHz)."""
    paths = sorted((digits_corpus / "recordings").glob("*_theo_1.flac"))
    signal = np.concatenate([soundfile.read(str(p), dtype="float32")[0] for p in paths])
    path = tmp_path / "theo.wav"
    soundfile.write(str(path), signal, 8000, subtype="FLOAT")
    return path


def test_stream_refuses_a_bidirectional_model_in_one_line(recording, tmp_path):
    proc = _run("-c", REPO / "configs" / "digits.yaml", "--checkpoint", tmp_path / "absent.ckpt",
                "--stream", recording)
    # The yaml is checked before the checkpoint or the audio.
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "ModelConfig.bidirectional" in last and "whole recording" in last


@pytest.mark.slow
def test_stream_prints_changing_partials_and_the_offline_final(recording, tmp_path):
    import mindaudio  # noqa: F401
    import mindspore as ms
    from mindaudio.config import load_config
    from mindaudio.data.audio import load_audio
    from mindaudio.data.features import log_spectrogram
    from mindaudio.data.statistics import signal_statistics
    from mindaudio.decoding.greedy import GreedyDecoder
    from mindaudio.models.build import build_model

    config = load_config(str(CONFIG), TINY)
    signal = load_audio(recording, 8000)
    model = build_model(config, seed=7, feature_statistics=signal_statistics([signal], config.SpectConfig))
    checkpoint = tmp_path / "tiny_stream.ckpt"
    ms.save_checkpoint(model, str(checkpoint))

    proc = _run("-c", CONFIG, *_overrides(), "--checkpoint", checkpoint, "--stream", "--json",
                "--stream_chunk_ms", "100", recording)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    partials = [r for r in records if r["type"] == "partial"]
    final = records[-1]
    assert final["type"] == "final" and records.count(final) == 1
    assert len(partials) >= 2
    texts = [r["transcript"] for r in partials]
    assert all(a != b for a, b in zip(texts, texts[1:]))  # printed only when it changes
    assert all(final["transcript"].startswith(text) for text in texts)
    # Each partial came before the end of the audio, in order of audio fed.
    seconds = [r["audio_seconds"] for r in partials]
    assert seconds == sorted(seconds) and seconds[0] < final["audio_seconds"]
    assert final["audio_seconds"] == pytest.approx(signal.size / 8000, abs=1e-3)

    # The final transcript is the offline greedy transcript of the same model on the whole file.
    model.set_train(False)
    features = log_spectrogram(signal, config.SpectConfig)
    logits, lengths = model(ms.Tensor(features[None, None]), ms.Tensor(np.array([features.shape[1]], np.int32)))
    offline = GreedyDecoder(config.labels, len(config.labels) - 1).decode(logits.asnumpy()[:, 0]).text
    assert final["transcript"] == offline

    # The plain form: one tab-separated line per partial, then the final one.
    # A file that cannot be read is named on stderr; the others are still streamed; exit 1.
    missing = tmp_path / "absent.wav"
    plain = _run("-c", CONFIG, *_overrides(), "--checkpoint", checkpoint, "--stream", missing, recording)
    assert plain.returncode == 1, plain.stderr[-3000:]
    assert "Traceback" not in plain.stderr
    errors = [line for line in plain.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(missing) in errors[0]
    lines = [line.split("\t") for line in plain.stdout.splitlines()]
    assert lines[-1][:2] == [str(recording), "final"] and lines[-1][3] == offline
