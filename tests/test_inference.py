"""Transcription (formats, rates, channels, long recordings, bad files), beam decoding in evaluation,
LM tuning, and export, with a tiny DeepSpeech2 of fixed random weights on real LibriSpeech audio.

Random weights make the transcripts meaningless, so these tests check what must hold for any
weights: the same samples give the same log-probabilities whatever the container, chunked
recordings give exactly the frames of the whole, exports give the checkpoint's logits.
"""
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import yaml

import mindaudio  # noqa: F401  (before mindspore)
import mindspore as ms

from corpus import small_config_dict
from mindaudio.config import SpectConfig, config_from_dict
from mindaudio.data.audio import AudioError, load_audio
from mindaudio.data.features import num_frames
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.data.manifest import write_manifest_with_transcripts
from mindaudio.decoding.greedy import GreedyDecoder
from mindaudio.inference import (ChunkGeometry, Failure, Transcriber, Transcript, build_transcriber,
                                 padded_length, plan_windows, stream_mono, transcribe_files)
from mindaudio.models.build import build_model

SHORT_ID, LONG_ID = "1089-134686-0001", "1988-24833-0001"  # 3.3 s and 7.9 s
SPECT = SpectConfig()


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def expected_output_frames(num_samples: int) -> int:
    """At 16 kHz: centred frames every 160 samples (1 + N // 160), halved by the stride-2 conv."""
    return (num_samples // 160) // 2 + 1


@pytest.fixture(scope="module")
def utterances(librispeech_mini):
    return {u[0]: u for u in extracted_utterances(librispeech_mini)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config dict, checkpoint path, model) of a hidden-32 DeepSpeech2 with seeded random weights."""
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    work = tmp_path_factory.mktemp("tiny")
    data = small_config_dict(work / "unused.json", work / "ckpt")
    config = config_from_dict(data, source="tiny")
    model = build_model(config, seed=4)
    checkpoint = work / "tiny.ckpt"
    ms.save_checkpoint(model, str(checkpoint))
    model.set_train(False)
    return data, checkpoint, model


@pytest.fixture(scope="module")
def transcriber(tiny):
    data, checkpoint, _ = tiny
    return build_transcriber(config_from_dict(data, source="tiny"), str(checkpoint))


# ---------------------------------------------------------------- chunk planning (pure)


def test_padding_for_one_file_adds_at_most_a_sixteenth_and_lengths_share_few_graphs():
    frames = np.arange(1, 6001)
    padded = np.array([padded_length(int(f)) for f in frames])
    assert (padded >= frames).all()
    assert (padded[frames >= 128] - frames[frames >= 128] <= frames[frames >= 128] / 16).all()
    assert (padded[frames < 128] - frames[frames < 128] < 8).all()
    # Padding twice changes nothing (a padded length is one of the shared lengths), and a 22 s
    # window (2200 frames) or anything shorter meets one of 82.
    assert all(padded_length(int(p)) == p for p in padded)
    assert len(set(padded[frames <= 2200].tolist())) == 82


@pytest.mark.parametrize("chunk,context", [(8.0, 2.0), (5.0, 0.5), (7.3, 3.1), (1.0, 0.02)])
def test_windows_keep_every_output_frame_exactly_once(chunk, context):
    geometry = ChunkGeometry.from_seconds(SPECT, chunk, context)
    longest = (geometry.chunk_frames + 2 * geometry.context_frames) * geometry.frame_samples  # chunk + 2 contexts
    for total in [1000, 320 * 400, 320 * 400 + 1, 320 * 400 - 1, 160 * 2501, 16000 * 31 + 77, 16000 * 95]:
        windows = plan_windows(total, geometry, SPECT)
        kept = []
        for w in windows:
            assert w.start_sample % 320 == 0 and 0 <= w.start_sample < w.end_sample <= total
            assert w.end_sample - w.start_sample <= longest + 320  # the last window may hold a frame more
            local_frames = expected_output_frames(w.end_sample - w.start_sample)
            assert w.keep_from + w.keep_frames <= local_frames
            assert w.first_frame == w.start_sample // 320 + w.keep_from
            kept.extend(range(w.first_frame, w.first_frame + w.keep_frames))
        assert kept == list(range(expected_output_frames(total))), (total, chunk, context)
        assert windows[-1].end_sample == total


# ---------------------------------------------------------------- reading audio


def test_streamed_reading_equals_whole_file_reading(utterances, tmp_path):
    signal, rate = sf.read(str(utterances[LONG_ID][1]), dtype="float32")
    stereo = np.stack([signal, 0.25 * signal[::-1]], axis=1)
    high = soxr.resample(stereo, rate, 44100).astype(np.float32)
    path = tmp_path / "stereo44k.wav"
    sf.write(str(path), high, 44100, subtype="FLOAT")
    with pytest.warns(UserWarning, match="channels mixed down"):
        whole = load_audio(path, 16000)
    streamed = np.concatenate(list(stream_mono(str(path), 16000, block_samples=12345)))
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


# ---------------------------------------------------------------- transcribing files


def write_variants(signal: np.ndarray, rate: int, out: Path) -> dict:
    """The same speech as FLAC and WAV at several rates, and as stereo."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    files["flac16k"] = out / "speech.flac"
    sf.write(str(files["flac16k"]), signal, rate, subtype="PCM_16")
    files["wav16k"] = out / "speech16k.wav"
    sf.write(str(files["wav16k"]), signal, rate, subtype="PCM_16")
    files["stereo_same"] = out / "stereo_same.wav"
    sf.write(str(files["stereo_same"]), np.stack([signal, signal], axis=1), rate, subtype="PCM_16")
    files["stereo_mixed"] = out / "stereo_mixed.wav"
    sf.write(str(files["stereo_mixed"]), np.stack([signal, 0.5 * signal], axis=1), rate, subtype="FLOAT")
    files["mono_mixed"] = out / "mono_mixed.wav"
    sf.write(str(files["mono_mixed"]), 0.75 * signal, rate, subtype="FLOAT")
    for target in (8000, 44100):
        files[f"wav{target}"] = out / f"speech{target}.wav"
        sf.write(str(files[f"wav{target}"]), soxr.resample(signal, rate, target), target, subtype="FLOAT")
    return files


def test_formats_rates_and_channels(utterances, transcriber, tmp_path):
    signal, rate = sf.read(str(utterances[SHORT_ID][1]), dtype="float32")
    files = write_variants(signal, rate, tmp_path)
    # Warnings about stereo mixdown are expected here.
    with pytest.warns(UserWarning):
        log_probs = {name: transcriber.log_probs(str(path))[0] for name, path in files.items()}
    frames = expected_output_frames(len(signal))
    reference = log_probs["flac16k"]
    assert reference.shape == (frames, 29)
    # The same 16-bit samples in another container, or twice as two channels: identical outputs.
    np.testing.assert_array_equal(log_probs["wav16k"], reference)
    np.testing.assert_array_equal(log_probs["stereo_same"], reference)
    # Two different channels are averaged: (x + x/2) / 2 is the mono 0.75 x.
    np.testing.assert_allclose(log_probs["stereo_mixed"], log_probs["mono_mixed"], atol=1e-5)
    # 44.1 kHz and back again: nearly the same signal, nearly the same posteriors.
    assert log_probs["wav44100"].shape == reference.shape
    assert np.abs(np.exp(log_probs["wav44100"]) - np.exp(reference)).max() < 0.02
    # 8 kHz has lost the upper band but lasts as long.
    assert abs(log_probs["wav8000"].shape[0] - frames) <= 1
    results = list(transcribe_files(transcriber, [str(files["flac16k"]), str(files["wav16k"])]))
    assert [type(r) for r in results] == [Transcript, Transcript]
    assert results[0].text == results[1].text
    assert results[0].duration == pytest.approx(len(signal) / rate)


@pytest.mark.slow
def test_long_recording_is_cut_into_bounded_windows_that_line_up(utterances, transcriber, tmp_path):
    ids = sorted(utterances)[:5]
    signal = np.concatenate([sf.read(str(utterances[i][1]), dtype="float32")[0] for i in ids])  # ~33 s
    path = tmp_path / "long.flac"
    sf.write(str(path), signal, 16000)
    whole = Transcriber(transcriber.model, SPECT, transcriber.decoder, chunk_seconds=60, context_seconds=2)
    whole_lp, duration, windows = whole.log_probs(str(path))
    assert windows == 1 and duration == pytest.approx(len(signal) / 16000)

    chunked = Transcriber(transcriber.model, SPECT, transcriber.decoder, chunk_seconds=8, context_seconds=2)
    seen = []
    chunked.on_window = lambda window, shape: seen.append(shape[1])
    chunk_lp, _, windows = chunked.log_probs(str(path))
    assert windows == len(seen) == 5
    assert max(seen) <= 1200 + 2  # (8 + 2 + 2) s of 10 ms frames: memory bounded by the window
    assert chunk_lp.shape == whole_lp.shape == (expected_output_frames(len(signal)), 29)
    # Each window normalises its own features and sees less context, so values differ a little;
    # a frame misplaced by one would differ far more than that.
    aligned = np.abs(chunk_lp - whole_lp).mean()
    shifted = min(np.abs(chunk_lp[1:] - whole_lp[:-1]).mean(), np.abs(chunk_lp[:-1] - whole_lp[1:]).mean())
    assert aligned < shifted / 3
    text = chunked.transcribe(str(path))
    assert text.windows == 5 and text.duration == pytest.approx(len(signal) / 16000)


def test_word_times_come_from_the_ctc_frames(utterances, transcriber):
    result = transcriber.transcribe(str(utterances[SHORT_ID][1]))
    log_probs, _, _ = transcriber.log_probs(str(utterances[SHORT_ID][1]))
    hypothesis = GreedyDecoder(transcriber.decoder.labels, 28).decode(log_probs)
    assert result.text == hypothesis.text
    assert [w["word"] for w in result.words] == result.text.split()
    for word, timing in zip(result.words, hypothesis.words):
        assert word["start"] == pytest.approx(timing.start_frame * 0.02)
        assert word["end"] == pytest.approx(timing.end_frame * 0.02)
        assert 0 <= word["start"] < word["end"] <= result.duration + 0.02
    starts = [w["start"] for w in result.words]
    assert starts == sorted(starts)


def test_unreadable_files_fail_alone(utterances, transcriber, tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    good = str(utterances[SHORT_ID][1])
    paths = [good, str(tmp_path / "missing.wav"), str(corrupt), str(empty), good]
    results = list(transcribe_files(transcriber, paths))
    assert [type(r) for r in results] == [Transcript, Failure, Failure, Failure, Transcript]
    assert "missing.wav: file not found" in results[1].error
    assert str(corrupt) in results[2].error
    assert str(empty) in results[3].error
    assert results[0].text == results[4].text


def poisoned(signal: np.ndarray, at_seconds: float, value: float, path: Path) -> Path:
    """`signal` (16 kHz) with `value` (NaN or inf) from `at_seconds` for 10 ms, as a float WAV."""
    signal = signal.copy()
    start = int(at_seconds * 16000)
    signal[start:start + 160] = value
    sf.write(str(path), signal, 16000, subtype="FLOAT")
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_audio_is_an_error_naming_the_file_read_whole_or_streamed(utterances, transcriber, tmp_path,
                                                                              value):
    signal, _ = sf.read(str(utterances[LONG_ID][1]), dtype="float32")  # 7.9 s
    path = poisoned(signal, 6.5, value, tmp_path / "poisoned.wav")
    # Read whole (shorter than a chunk), and streamed in windows of 2 s: the bad samples sit in a
    # later window, after good ones were already run.
    streamed = Transcriber(transcriber.model, SPECT, transcriber.decoder, chunk_seconds=2, context_seconds=0.5)
    for reader in (transcriber, streamed):
        with pytest.raises(AudioError, match=rf"{re.escape(str(path))}: .*NaN"):
            reader.log_probs(str(path))
    seen = []
    streamed.on_window = lambda window, shape: seen.append(window)
    with pytest.raises(AudioError, match=r"non-finite sample \(NaN or inf\) at 6.500 s"):
        streamed.log_probs(str(path))
    assert seen, "the bad block should be met after the first window ran"
    streamed.on_window = None
    good = str(utterances[SHORT_ID][1])
    results = list(transcribe_files(streamed, [str(path), good]))
    assert [type(r) for r in results] == [Failure, Transcript]
    assert str(path) in results[0].error
    # The same float file without the poison reads fine.
    sf.write(str(tmp_path / "clean.wav"), signal, 16000, subtype="FLOAT")
    assert streamed.log_probs(str(tmp_path / "clean.wav"))[2] == 4


def test_long_files_show_a_progress_bar_per_window_when_asked(utterances, transcriber, tmp_path):
    path = str(utterances[LONG_ID][1])  # 7.9 s: 4 windows of 2 s
    shown = io.StringIO()
    bar = Transcriber(transcriber.model, SPECT, transcriber.decoder, chunk_seconds=2, context_seconds=0.5,
                      progress=True, progress_file=shown)
    assert bar.transcribe(path).windows == 4
    assert "4/4" in shown.getvalue() and "window" in shown.getvalue() and os.path.basename(path) in shown.getvalue()
    # By default only a terminal gets the bar (a StringIO is not one); False never shows it.
    for progress in (None, False):
        quiet = io.StringIO()
        Transcriber(transcriber.model, SPECT, transcriber.decoder, chunk_seconds=2, context_seconds=0.5,
                    progress=progress, progress_file=quiet).transcribe(path)
        assert quiet.getvalue() == ""
    # A file read whole has one window: no bar.
    whole = io.StringIO()
    Transcriber(transcriber.model, SPECT, transcriber.decoder, progress=True, progress_file=whole).transcribe(path)
    assert whole.getvalue() == ""


@pytest.mark.slow
def test_transcribe_command_prints_json_and_reports_bad_files(utterances, tiny, tmp_path, repo_root):
    data, checkpoint, _ = tiny
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(100))
    files = [str(utterances[SHORT_ID][1]), str(corrupt), str(utterances[LONG_ID][1])]
    proc = subprocess.run([sys.executable, "transcribe.py", "-c", str(config), "--checkpoint", str(checkpoint),
                           "--json", "--EvalConfig.decoder_type", "beam", "--EvalConfig.beam_width", "4", *files],
                          cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["path"] for line in lines] == files
    assert "error" in lines[1] and str(corrupt) in lines[1]["error"]
    assert any(line.startswith("error:") and str(corrupt) in line for line in proc.stderr.splitlines())
    for line in (lines[0], lines[2]):
        assert line["duration"] == pytest.approx(sf.info(line["path"]).duration, abs=1e-3)
        assert [w["word"] for w in line["words"]] == line["transcript"].split()
    plain = subprocess.run([sys.executable, "transcribe.py", "-c", str(config), "--checkpoint", str(checkpoint),
                            files[0]], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert plain.stdout.startswith(files[0] + "\t")


# ---------------------------------------------------------------- evaluation and tuning with the beam decoder


@pytest.fixture(scope="module")
def short_manifest(utterances, tmp_path_factory):
    chosen = [utterances[i] for i in ("1089-134686-0001", "1988-24833-0000")]
    return write_manifest_with_transcripts(tmp_path_factory.mktemp("manifest"), chosen)


@pytest.fixture(scope="module")
def lm_path(reference_dir, tmp_path_factory):
    from mindaudio.decoding.ngram import build_arpa
    path = tmp_path_factory.mktemp("lm") / "tc5.arpa"
    build_arpa(str(reference_dir / "librispeech_lengths" / "train-clean-5.transcripts.txt"), str(path),
               order=2, alphabet=[c for c in "'ABCDEFGHIJKLMNOPQRSTUVWXYZ"])
    return path


@pytest.mark.slow
def test_evaluation_with_beam_width_one_equals_greedy_and_reports_the_decoder(tiny, short_manifest, tmp_path,
                                                                               lm_path):
    pytest.importorskip("pyctcdecode")
    from mindaudio.evaluation import run_evaluation
    data, checkpoint, _ = tiny
    reports = {}
    for name, keys in {"greedy": {}, "beam1": {"decoder_type": "beam", "beam_width": 1},
                       "lm": {"decoder_type": "beam", "beam_width": 8, "lm_path": str(lm_path)}}.items():
        data = dict(data, Pretrained_model=str(checkpoint))
        data["EvalConfig"] = dict(data["EvalConfig"], test_manifest=str(short_manifest),
                                  save_output=str(tmp_path / name), **keys)
        result, report = run_evaluation(config_from_dict(data, source="tiny"), progress=False)
        reports[name] = json.loads(Path(report).read_text())
    hyps = {name: [u["hypothesis"] for u in r["utterances"]] for name, r in reports.items()}
    assert hyps["beam1"] == hyps["greedy"]
    assert reports["beam1"]["wer"] == reports["greedy"]["wer"]
    assert reports["greedy"]["decoder"] == "greedy"
    assert reports["lm"]["decoder"].startswith("beam search (width 8, LM ")
    # With an LM every hypothesis word is one the LM knows or scored as unknown; at least the
    # output is made of whole words from the label alphabet.
    assert all(set(h) <= set("'ABCDEFGHIJKLMNOPQRSTUVWXYZ ") for h in hyps["lm"])


@pytest.mark.slow
def test_tune_lm_writes_the_grid_and_reuses_its_cache(tiny, short_manifest, lm_path, tmp_path, repo_root):
    pytest.importorskip("pyctcdecode")
    data, checkpoint, _ = tiny
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    command = [sys.executable, "scripts/tune_lm.py", "-c", str(config), "--checkpoint", str(checkpoint),
               "--lm", str(lm_path), "--manifest", str(short_manifest), "--alphas", "0.2", "0.8",
               "--betas", "0", "2", "--beam_width", "4", "--output", str(tmp_path / "tune.json")]
    first = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "tune.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in result["grid"]] == [(0.2, 0.0), (0.2, 2.0), (0.8, 0.0), (0.8, 2.0)]
    assert result["best"] == min(result["grid"], key=lambda r: (r["wer"], r["cer"], r["alpha"], r["beta"]))
    assert result["utterances"] == 2 and (tmp_path / "tune.npz").is_file()
    second = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "from cache" in second.stdout
    again = json.loads((tmp_path / "tune.json").read_text())["grid"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in result["grid"]]


# ---------------------------------------------------------------- export


@pytest.mark.slow
def test_exported_mindir_and_onnx_give_the_checkpoint_logits(tiny, tmp_path, utterances):
    from mindaudio.data.features import log_spectrogram
    from mindaudio.export import check_inputs, check_mindir, export_model
    data, checkpoint, model = tiny
    config = config_from_dict(data, source="tiny")
    features = log_spectrogram(load_audio(utterances[SHORT_ID][1], 16000), config.SpectConfig)
    formats = ["MINDIR"] + (["ONNX"] if _has("onnx") and _has("onnxruntime") else [])
    report = export_model(config, str(checkpoint), str(tmp_path / "ds2"), formats, onnx_frames=400,
                          check_features=features)
    assert set(report.files) == set(formats)
    for check in report.checks:
        assert check.lengths_equal and check.max_abs_diff <= 1e-5, check
    description = json.loads((tmp_path / "ds2.json").read_text())
    assert description["labels"] == config.labels and description["seconds_per_output_frame"] == 0.02
    # The check is not vacuous: a model with other weights is far from the exported file.
    other = build_model(config, seed=99)
    other.set_train(False)
    mismatch = check_mindir(other, report.files["MINDIR"], check_inputs(161, [(200, [200])]))
    assert mismatch.max_abs_diff > 1e-2


@pytest.mark.skipif(not (_has("onnx") and _has("onnxruntime")), reason="onnx or onnxruntime missing")
def test_mindspore_onnx_conv_padding_needs_the_correction(tiny, tmp_path):
    # Documents why export_onnx rewrites `pads`: MindSpore 2.10 writes them in its own order, and
    # onnxruntime then rejects the graph. If this starts failing, MindSpore has fixed it.
    ort = pytest.importorskip("onnxruntime")
    from mindaudio.export import fix_onnx_conv_pads
    _, _, model = tiny
    stem = str(tmp_path / "raw")
    ms.export(model, ms.Tensor(np.zeros((1, 1, 161, 120), np.float32)), ms.Tensor(np.array([120], np.int32)),
              file_name=stem, file_format="ONNX")
    with pytest.raises(Exception, match="Incompatible dimensions|ShapeInferenceError"):
        ort.InferenceSession(stem + ".onnx", providers=["CPUExecutionProvider"])
    assert fix_onnx_conv_pads(stem + ".onnx") == 2
    ort.InferenceSession(stem + ".onnx", providers=["CPUExecutionProvider"])


def test_errors_of_inference_and_export_are_user_errors():
    # The command-line wrapper turns exactly these into one `error:` line instead of a traceback.
    from mindaudio.config import UserError
    from mindaudio.export import ExportError
    from mindaudio.inference import TranscriptionError
    assert issubclass(TranscriptionError, UserError) and issubclass(ExportError, UserError)
    assert str(TranscriptionError("a.wav", "no audio samples")) == "a.wav: no audio samples"


# ---------------------------------------------------------------- the compile cache in evaluation, transcription, serving


def _cache_lines(text: str, prefix: str):
    return [line for line in text.splitlines() if line.startswith(prefix)]


@pytest.mark.slow
def test_a_second_evaluation_or_transcription_loads_its_graphs_from_the_compile_cache(
        tiny, short_manifest, utterances, tmp_path, repo_root):
    data, checkpoint, _ = tiny
    data = dict(data, Pretrained_model=str(checkpoint), RuntimeConfig={"compile_cache_dir": str(tmp_path / "cache")})
    data["EvalConfig"] = dict(data["EvalConfig"], test_manifest=str(short_manifest),
                              save_output=str(tmp_path / "report"))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))

    def run(*args):
        proc = subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    cold, warm = run("eval.py", "-c", str(config)), run("eval.py", "-c", str(config))
    assert re.fullmatch(r"model: \d+ graph\(s\) compiled and stored in the compile cache in .* s",
                        _cache_lines(cold.stdout, "model: ")[0])
    assert re.fullmatch(r"model: \d+ graph\(s\) loaded from the compile cache in .* s",
                        _cache_lines(warm.stdout, "model: ")[0])
    assert _cache_lines(warm.stdout, "Test Summary") == _cache_lines(cold.stdout, "Test Summary") != []
    assert _cache_lines(warm.stdout, "Hyp: ") == _cache_lines(cold.stdout, "Hyp: ")

    # Two files padded to different lengths (3.3 s and 7.9 s): one entry each.
    files = [str(utterances[SHORT_ID][1]), str(utterances[LONG_ID][1])]
    labels = [f"transcribe 1x{padded_length(num_frames(sf.info(path).frames, SPECT))}" for path in files]
    assert labels[0] != labels[1]
    cold = run("transcribe.py", "-c", str(config), "--json", *files)
    warm = run("transcribe.py", "-c", str(config), "--json", files[1], files[0])
    assert [line.split(":")[0] for line in _cache_lines(cold.stderr, "transcribe 1x")] == labels
    assert all("compiled and stored" in line for line in _cache_lines(cold.stderr, "transcribe 1x"))
    assert [line.split(":")[0] for line in _cache_lines(warm.stderr, "transcribe 1x")] == labels[::-1]
    assert all("loaded from the compile cache" in line for line in _cache_lines(warm.stderr, "transcribe 1x"))
    by_path = {json.loads(line)["path"]: json.loads(line)["transcript"] for line in cold.stdout.splitlines()}
    assert {json.loads(line)["path"]: json.loads(line)["transcript"] for line in warm.stdout.splitlines()} == by_path


@pytest.mark.slow
def test_the_server_loads_the_batch_shapes_an_earlier_server_compiled(tiny, tmp_path, repo_root):
    # In a process of its own, as a server runs: MindSpore keeps one cache folder per process
    # (see test_compile_cache.py). An entry script, not `python -c`: the cache hashes it.
    data, checkpoint, _ = tiny
    runner = tmp_path / "check_server_cache.py"
    runner.write_text("import sys\n"
                      f"sys.path[:0] = [{str(repo_root)!r}, {str(Path(__file__).resolve().parent)!r}]\n"
                      "import test_inference\n"
                      f"test_inference.check_server_cache({json.dumps(data)!r}, {str(checkpoint)!r}, "
                      f"{str(tmp_path / 'cache')!r})\n")
    proc = subprocess.run([sys.executable, str(runner)], cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def check_server_cache(data: str, checkpoint: str, cache_dir: str) -> None:
    """The checks of the test above, in a fresh process (assertions raise): two services built one
    after the other on one cache; the second loads the warm-up graph and a batch of 2 that the
    first compiled, and computes the same log-probabilities."""
    from mindaudio.data.features import num_freq_bins
    from mindaudio.serving.service import build_service

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config = config_from_dict(json.loads(data), source="tiny")
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((num_freq_bins(config.SpectConfig), frames)).astype(np.float32)
                for frames in (250, 330)]
    results, reports = [], []
    for _ in range(2):
        # batch_wait 0.5 s: both items submitted at once go in one batch.
        service = build_service(config, checkpoint, "CPU", max_batch=2, batch_wait=0.5, compile_cache_dir=cache_dir)
        try:
            futures = [service.worker.submit(f) for f in features]
            results.append([future.result() for future in futures])
            reports.append([(r.hit, r.reason) for r in service.worker.compiler.reports])
            assert service.worker.stats.compiled_shapes == {(1, 200), (2, 400)}
        finally:
            service.close()
    # The warm-up's 1 x 200 frames, then both items padded to 400 frames in one batch of 2.
    assert reports[0] == [(False, ""), (False, "")], reports
    assert reports[1] == [(True, ""), (True, "")], reports
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)
