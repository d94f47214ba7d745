"""The streaming model and recogniser: the lookahead layer against numpy, fixed feature statistics
against numpy, padding independence of the unidirectional model, the statistics travelling with
the checkpoint, and streamed logits equal to the offline forward for many chunkings of real speech."""
import numpy as np
import pytest
import soundfile

import mindaudio  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms

from mindaudio.checkpoint import CheckpointError, load_model_weights
from mindaudio.config import DEFAULT_LABELS, SpectConfig
from mindaudio.data.audio import load_audio
from mindaudio.data.features import log_spectrogram
from mindaudio.data.statistics import manifest_statistics, signal_statistics
from mindaudio.decoding.greedy import GreedyDecoder
from mindaudio.decoding.hypothesis import log_softmax
from mindaudio.models.deepspeech2 import DeepSpeechModel, Lookahead, output_length
from mindaudio.streaming import (StreamingError, StreamingRecogniser, algorithmic_latency_seconds,
                                 lookahead_frames)

HIDDEN, LAYERS, CONTEXT = 48, 2, 5


def _spect(**overrides):
    values = dict(original_compat=False, log_magnitude="log", normalisation="fixed")
    values.update(overrides)
    return SpectConfig(**values)


def _streaming_model(spect, signals, seed=0, context=CONTEXT):
    """A small unidirectional model with statistics from `signals` and BatchNorm statistics that
    are not the identity (so the per-frame BN of the stream is really exercised)."""
    rng = np.random.default_rng(seed)
    model = DeepSpeechModel(1, DEFAULT_LABELS, HIDDEN, LAYERS, spect, bidirectional=False,
                            lookahead_context=context, fixed_normalisation=True, rng=rng)
    model.set_feature_statistics(*signal_statistics(signals, spect))
    weight = model.lookahead.weight
    weight.set_data(ms.Tensor(rng.uniform(-0.5, 0.5, weight.shape).astype(np.float32)))
    for bn in (model.conv.bn1, model.conv.bn2):
        bn.moving_mean.set_data(ms.Tensor(rng.normal(0, 0.3, bn.moving_mean.shape).astype(np.float32)))
        bn.moving_variance.set_data(ms.Tensor(rng.uniform(0.5, 2.0, bn.moving_variance.shape).astype(np.float32)))
        bn.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, bn.gamma.shape).astype(np.float32)))
    model.set_train(False)
    return model


def _offline_log_probs(model, spect, signal, extra_padding=0, pad_value=0.0):
    features = log_spectrogram(signal, spect)
    freq, frames = features.shape
    batch = np.full((1, 1, freq, frames + extra_padding), pad_value, np.float32)
    batch[0, 0, :, :frames] = features
    logits, _ = model(ms.Tensor(batch), ms.Tensor(np.array([frames], np.int32)))
    return log_softmax(logits.asnumpy()[: int(output_length(frames)), 0])


def _stream(recogniser, signal, sizes):
    partials = []
    position = 0
    for size in sizes:
        partials.append(recogniser.feed(signal[position:position + size]))
        position += size
        if position >= signal.size:
            break
    assert position >= signal.size
    final = recogniser.finish()
    return partials, final


def _chunk_sizes(kind, sample_rate, rng):
    if kind == "random":
        return iter(lambda: int(rng.integers(1, sample_rate // 2)), None)
    seconds = {"10ms": 0.01, "160ms": 0.16, "1s": 1.0}[kind]
    size = int(round(seconds * sample_rate))
    return iter(lambda: size, None)


@pytest.fixture(scope="module")
def speech(librispeech_mini):
    """About 3.5 s of a real LibriSpeech utterance (16 kHz) and two others for the statistics."""
    paths = sorted(librispeech_mini.rglob("*.flac"))
    signals = [soundfile.read(str(p), dtype="float32")[0] for p in paths[:3]]
    return signals[0][: int(3.5 * 16000)], signals[1:]


# --- the lookahead layer ----------------------------------------------------------------------

def test_lookahead_matches_numpy_row_convolution(execution_mode):
    rng = np.random.default_rng(1)
    steps, batch, features, context = 13, 3, 7, 4
    layer = Lookahead(features, context)
    assert np.array_equal(layer(ms.Tensor(np.ones((3, 1, features), np.float32))).asnumpy(),
                          np.ones((3, 1, features)))  # starts as the identity
    layer.weight.set_data(ms.Tensor(rng.standard_normal((context + 1, features)).astype(np.float32)))
    x = rng.standard_normal((steps, batch, features)).astype(np.float32)
    lengths = [13, 9, 2]
    for b, length in enumerate(lengths):
        x[length:, b] = 0  # the masked LSTM output the layer receives
    got = layer(ms.Tensor(x)).asnumpy()
    w = layer.weight.asnumpy().astype(np.float64)
    expected = np.zeros((steps, batch, features))
    for b, length in enumerate(lengths):
        for t in range(steps):
            for j in range(context + 1):
                if t + j < length:
                    expected[t, b] += w[j] * x[t + j, b]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert w.shape == (context + 1, features)


def test_unidirectional_model_names_its_extra_parameters():
    model = DeepSpeechModel(1, DEFAULT_LABELS, 16, 2, _spect(), bidirectional=False, lookahead_context=3,
                            fixed_normalisation=True, rng=np.random.default_rng(0))
    names = [p.name for p in model.get_parameters()]
    assert {"feature_mean", "feature_std", "lookahead.weight"} <= set(names)
    assert not any(name.endswith("_reverse") for name in names)
    trainable = {p.name for p in model.trainable_params()}
    assert "lookahead.weight" in trainable and not {"feature_mean", "feature_std"} & trainable


# --- fixed normalisation ----------------------------------------------------------------------

def test_signal_statistics_match_numpy_over_all_frames(digits_corpus):
    spect = SpectConfig(sample_rate=8000, window_size=0.01, window_stride=0.01, original_compat=False,
                        log_magnitude="log", normalisation="fixed")
    paths = sorted((digits_corpus / "recordings").glob("*.flac"))[:6]
    signals = [load_audio(p, 8000) for p in paths]
    mean, std = signal_statistics(signals, spect)
    # Independent reference: numpy's own STFT of each recording, all frames side by side.
    n_fft = hop = 80
    columns = []
    for signal in signals:
        padded = np.pad(signal.astype(np.float64), n_fft // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:1 + signal.size // hop]
        window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hamming
        columns.append(np.log(np.abs(np.fft.rfft(frames * window, axis=1)) + 1e-6).T)
    every_frame = np.concatenate(columns, axis=1)
    np.testing.assert_allclose(mean, every_frame.mean(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, every_frame.std(axis=1), rtol=1e-4, atol=1e-4)
    # The features of a fixed-normalisation config are those same un-normalised values.
    np.testing.assert_allclose(log_spectrogram(signals[0], spect), columns[0], atol=1e-3)


def test_manifest_statistics_read_the_manifests_recordings(tmp_path, digits_corpus):
    spect = _spect(sample_rate=8000, window_size=0.01, window_stride=0.01)
    paths = sorted((digits_corpus / "recordings").glob("*.flac"))[:4]
    manifest = tmp_path / "m.json"
    import json
    manifest.write_text("".join(json.dumps({"audio_filepath": str(p), "text": "ONE",
                                            "duration": soundfile.info(str(p)).duration}) + "\n"
                                for p in paths))
    mean, std = manifest_statistics(str(manifest), spect)
    ref_mean, ref_std = signal_statistics([load_audio(p, 8000) for p in paths], spect)
    np.testing.assert_array_equal(mean, ref_mean)
    np.testing.assert_array_equal(std, ref_std)


def test_fixed_normalisation_model_does_not_depend_on_padding(execution_mode, speech):
    signal, others = speech
    spect = _spect()
    model = _streaming_model(spect, others)
    alone = _offline_log_probs(model, spect, signal)
    # Garbage (not zeros) in the padding: the model masks its normalised input.
    padded = _offline_log_probs(model, spect, signal, extra_padding=77, pad_value=3.0)
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_statistics_travel_with_the_checkpoint(tmp_path, speech):
    signal, others = speech
    spect = _spect()
    model = _streaming_model(spect, others, seed=2)
    path = str(tmp_path / "stream.ckpt")
    ms.save_checkpoint(model, path)
    fresh = DeepSpeechModel(1, DEFAULT_LABELS, HIDDEN, LAYERS, spect, bidirectional=False,
                            lookahead_context=CONTEXT, fixed_normalisation=True, rng=np.random.default_rng(9))
    load_model_weights(fresh, path)
    np.testing.assert_array_equal(fresh.feature_mean.asnumpy(), model.feature_mean.asnumpy())
    np.testing.assert_array_equal(fresh.feature_std.asnumpy(), model.feature_std.asnumpy())
    # A checkpoint without statistics does not fit a fixed-normalisation model.
    plain = DeepSpeechModel(1, DEFAULT_LABELS, HIDDEN, LAYERS, spect, bidirectional=False,
                            lookahead_context=CONTEXT, rng=np.random.default_rng(3))
    plain_path = str(tmp_path / "plain.ckpt")
    ms.save_checkpoint(plain, plain_path)
    with pytest.raises(CheckpointError, match="feature_mean"):
        load_model_weights(fresh, plain_path)


# --- streaming equals offline -----------------------------------------------------------------

@pytest.mark.parametrize("chunking", ["10ms", "160ms", "1s", "random"])
def test_streamed_logits_equal_offline_forward(chunking, speech):
    signal, others = speech
    spect = _spect()
    model = _streaming_model(spect, others)
    reference = _offline_log_probs(model, spect, signal)
    recogniser = StreamingRecogniser(model, spect, decoder=GreedyDecoder(DEFAULT_LABELS, len(DEFAULT_LABELS) - 1))
    partials, final = _stream(recogniser, signal, _chunk_sizes(chunking, 16000, np.random.default_rng(5)))
    streamed = recogniser.log_probs
    assert streamed.shape == reference.shape
    np.testing.assert_allclose(streamed, reference, atol=1e-5)
    assert final == GreedyDecoder(DEFAULT_LABELS, len(DEFAULT_LABELS) - 1).decode(reference).text
    # A partial transcript only grows: each is the start of the final one.
    assert all(final.startswith(partial) for partial in partials)


@pytest.mark.parametrize("compat", [True, False])
def test_streaming_handles_both_frame_paddings_and_reuse(compat, speech, execution_mode):
    # compat: zero-padded centred frames and log1p; otherwise reflection and log.
    signal, others = speech
    spect = _spect(original_compat=compat, log_magnitude="log1p" if compat else "log")
    model = _streaming_model(spect, others, seed=4, context=0 if compat else 3)
    reference = _offline_log_probs(model, spect, signal[:20000])
    recogniser = StreamingRecogniser(model, spect)
    for _ in range(2):  # reset() gives a fresh stream
        _stream(recogniser, signal[:20000], _chunk_sizes("random", 16000, np.random.default_rng(8)))
        np.testing.assert_allclose(recogniser.log_probs, reference, atol=1e-5)
        recogniser.reset()


@pytest.mark.parametrize("mel_bands", [0, 20])
def test_streaming_digits_at_8khz_with_partials_that_grow(digits_corpus, mel_bands):
    spect = _spect(sample_rate=8000, window_size=0.01, window_stride=0.01, mel_bands=mel_bands)
    paths = sorted((digits_corpus / "recordings").glob("*.flac"))
    signals = [load_audio(p, 8000) for p in paths[:12]]
    model = _streaming_model(spect, signals[4:])
    signal = np.concatenate(signals[:4])
    reference = _offline_log_probs(model, spect, signal)
    recogniser = StreamingRecogniser(model, spect)
    emitted = []
    for start in range(0, signal.size, 80):  # 10 ms
        recogniser.feed(signal[start:start + 80])
        emitted.append(recogniser.frames_emitted)
    recogniser.finish()
    np.testing.assert_allclose(recogniser.log_probs, reference, atol=1e-5)
    # Frames come out while audio is still arriving, never more than the lookahead behind.
    assert emitted == sorted(emitted) and emitted[len(emitted) // 2] > 0
    assert recogniser.frames_emitted == reference.shape[0] > emitted[-1]


def test_latency_follows_the_geometry():
    spect = SpectConfig()  # 16 kHz, 10 ms hop, 20 ms window
    model = DeepSpeechModel(1, DEFAULT_LABELS, 16, 1, spect, bidirectional=False, lookahead_context=20,
                            fixed_normalisation=True, rng=np.random.default_rng(0))
    # 20 output frames -> conv2 needs 25 conv1 outputs ahead -> 2 * 25 + 5 = 55 feature frames.
    assert lookahead_frames(model) == 55
    assert algorithmic_latency_seconds(model, spect) == pytest.approx(0.55 + 0.01)


def test_models_that_need_the_whole_recording_are_refused():
    spect = _spect()
    bidirectional = DeepSpeechModel(1, DEFAULT_LABELS, 16, 1, spect, fixed_normalisation=True)
    with pytest.raises(StreamingError, match="bidirectional"):
        StreamingRecogniser(bidirectional, spect)
    per_utterance = DeepSpeechModel(1, DEFAULT_LABELS, 16, 1, spect, bidirectional=False)
    with pytest.raises(StreamingError, match="normalisation: fixed"):
        StreamingRecogniser(per_utterance, spect)


def test_stream_errors_name_the_problem(speech):
    signal, others = speech
    spect = _spect()
    recogniser = StreamingRecogniser(_streaming_model(spect, others), spect)
    recogniser.feed(signal[:100])
    with pytest.raises(StreamingError, match="too short"):
        recogniser.finish()
    recogniser.reset()
    with pytest.raises(StreamingError, match="non-finite"):
        recogniser.feed(np.array([0.0, np.nan], np.float32))
    recogniser.reset()
    recogniser.feed(signal[:4000])
    recogniser.finish()
    with pytest.raises(StreamingError, match="finished"):
        recogniser.feed(signal[:10])
