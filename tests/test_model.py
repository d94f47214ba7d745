"""DeepSpeech2 model: the original's parameter names, checkpoint compatibility, padding invariance."""
import numpy as np
import pytest
import soundfile

import mindaudio  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms
from mindspore import nn

from mindaudio.config import DEFAULT_LABELS, SpectConfig
from mindaudio.models.deepspeech2 import (LSTMLayer, DeepSpeechModel, output_length,
                                          rnn_input_size)
from mindaudio.models.loss import NetWithCTCLoss

SMALL_HIDDEN, SMALL_LAYERS = 64, 2


def _parse_param_list(path):
    """`name (d0, d1) Dtype` lines -> list of (name, shape tuple, dtype name)."""
    entries = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, rest = line.split(" ", 1)
        shape_text, dtype = rest.rsplit(" ", 1)
        shape = tuple(int(d) for d in shape_text.strip("()").split(",") if d.strip())
        entries.append((name, shape, dtype))
    return entries


_NUMPY_DTYPES = {"Float32": np.float32, "Int32": np.int32, "Int64": np.int64}


@pytest.fixture(scope="module")
def reference_params(reference_dir):
    return _parse_param_list(reference_dir / "mindaudio_deepspeech2_params.txt")


@pytest.fixture(scope="module")
def reference_train_params(reference_dir):
    return _parse_param_list(
        reference_dir / "mindaudio_deepspeech2_train_checkpoint_params.txt")


@pytest.fixture(scope="module")
def full_model():
    model = DeepSpeechModel(1, DEFAULT_LABELS, 1024, 5, SpectConfig(), rng=np.random.default_rng(0))
    model.set_train(False)
    return model


def _small_model(masked=True, seed=0, bidirectional=True):
    model = DeepSpeechModel(4, DEFAULT_LABELS, SMALL_HIDDEN, SMALL_LAYERS, SpectConfig(),
                            bidirectional=bidirectional, masked=masked,
                            rng=np.random.default_rng(seed))
    model.set_train(False)
    return model


def _log_spectrogram(signal, sample_rate=16000):
    """(161, frames) normalised log1p |STFT|, 20 ms Hamming windows every 10 ms (test-only features)."""
    n_fft, hop = int(sample_rate * 0.02), int(sample_rate * 0.01)
    padded = np.pad(signal, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.log1p(np.abs(np.fft.rfft(frames * np.hamming(n_fft), axis=1))).T
    return ((spectrum - spectrum.mean()) / spectrum.std()).astype(np.float32)


@pytest.fixture(scope="module")
def real_features(librispeech_mini):
    """Two real utterances' spectrograms, cropped short to keep the tests fast: [(161, T), ...]."""
    paths = sorted(librispeech_mini.rglob("*.flac"))[:2]
    features = []
    for path, frames in zip(paths, (90, 143)):
        signal, rate = soundfile.read(str(path), dtype="float32")
        assert rate == 16000
        features.append(_log_spectrogram(signal[: frames * 160 - 1]))
    return features


def _pad_batch(spectrograms, num_frames):
    """[(F, T_i)] -> features (B, 1, F, num_frames) zero-padded, lengths (B,) int32."""
    batch = np.zeros((len(spectrograms), 1, spectrograms[0].shape[0], num_frames), np.float32)
    for i, spec in enumerate(spectrograms):
        batch[i, 0, :, : spec.shape[1]] = spec
    lengths = np.array([spec.shape[1] for spec in spectrograms], np.int32)
    return batch, lengths


def _run(model, features, lengths):
    logits, out_lengths = model(ms.Tensor(features), ms.Tensor(lengths))
    return logits.asnumpy(), out_lengths.asnumpy()


# --- the original's parameters and checkpoints ----------------------------------------------

def test_full_model_parameters_equal_reference(full_model, reference_params):
    ours = [(p.name, tuple(p.shape), "Float32" if p.dtype == ms.float32 else str(p.dtype))
            for p in full_model.get_parameters()]
    assert len(reference_params) == 51
    assert ours == reference_params


def _write_checkpoint(path, entries, rng, random_names):
    """Save `entries` (name, shape, dtype) with random values for `random_names`, zeros otherwise."""
    values = {}
    for name, shape, dtype in entries:
        if name.endswith("moving_variance"):
            values[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)  # a variance is positive
        elif name in random_names:
            values[name] = rng.standard_normal(shape, dtype=np.float32)
        else:
            values[name] = np.zeros(shape, _NUMPY_DTYPES[dtype])
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in values.items()],
                       str(path))
    return values


@pytest.mark.slow
def test_reference_checkpoint_loads_completely(full_model, reference_params, tmp_path):
    names = {name for name, _, _ in reference_params}
    values = _write_checkpoint(tmp_path / "bare.ckpt", reference_params, np.random.default_rng(1),
                               names)
    not_in_file, not_in_model = ms.load_param_into_net(
        full_model, ms.load_checkpoint(str(tmp_path / "bare.ckpt")))
    assert not_in_file == [] and not_in_model == []
    params = dict(full_model.parameters_and_names())
    for name in ("conv.conv1.weight", "RNN.lstms.4.bias_hh_l0_reverse", "fc.module.weight"):
        np.testing.assert_array_equal(params[name].asnumpy(), values[name])


@pytest.mark.slow
def test_training_cell_checkpoint_loads_for_evaluation(full_model, reference_params,
                                                       reference_train_params, tmp_path):
    model_names = {name for name, _, _ in reference_params}
    values = _write_checkpoint(tmp_path / "train.ckpt", reference_train_params,
                               np.random.default_rng(2), model_names)
    not_in_file, not_in_model = ms.load_param_into_net(
        full_model, ms.load_checkpoint(str(tmp_path / "train.ckpt")))
    assert not_in_file == []
    extra = {name for name, _, _ in reference_train_params} - model_names
    assert set(not_in_model) == extra
    assert {"global_step", "scale_sense", "moment1.fc.module.weight"} <= extra
    params = dict(full_model.parameters_and_names())
    for name in ("conv.bn2.gamma", "RNN.lstms.0.weight_ih_l0"):
        np.testing.assert_array_equal(params[name].asnumpy(), values[name])


def test_full_model_forward_shapes(full_model):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1, 1, 161, 100)).astype(np.float32)
    logits, lengths = _run(full_model, features, np.array([100], np.int32))
    assert logits.shape == (50, 1, len(DEFAULT_LABELS))
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
    assert lengths.tolist() == [50]


# --- geometry and initialisation --------------------------------------------------------------

def test_output_length_follows_conv_arithmetic():
    frames = np.arange(1, 400)
    # Time axis: conv1 kernel 11, stride 2, padding 5; conv2 kernel 11, stride 1, padding 5.
    expected = np.floor((frames + 2 * 5 - 11) / 2) + 1
    np.testing.assert_array_equal(output_length(frames), expected)
    assert output_length(100) == 50 and output_length(101) == 51


def test_rnn_input_size_follows_frequency_bins():
    assert rnn_input_size(161) == 32 * 41  # 16 kHz, 20 ms windows
    # 8 kHz: 81 bins -> 41 -> 21.
    assert rnn_input_size(81) == 32 * 21  # 8 kHz, 20 ms windows


@pytest.mark.parametrize("num_frames", [1, 2, 37])
def test_logit_frames_match_output_length(num_frames):
    model = _small_model()
    features = np.random.default_rng(0).standard_normal((2, 1, 161, num_frames)).astype(np.float32)
    logits, lengths = _run(model, features, np.array([num_frames, 1], np.int32))
    assert logits.shape == (output_length(num_frames), 2, len(DEFAULT_LABELS))
    assert lengths.tolist() == [output_length(num_frames), 1]


def test_initialisation_follows_the_original():
    params = dict(_small_model(seed=0).parameters_and_names())
    for name, kernel in (("conv.conv1.weight", (41, 11)), ("conv.conv2.weight", (21, 11))):
        expected_std = np.sqrt(2.0 / (kernel[0] * kernel[1] * 32))
        assert params[name].asnumpy().std() == pytest.approx(expected_std, rel=0.05)
    for bn in ("conv.bn1", "conv.bn2"):
        assert np.all(params[f"{bn}.gamma"].asnumpy() == 1)
        assert np.all(params[f"{bn}.beta"].asnumpy() == 0)
    fc = params["fc.module.weight"].asnumpy()
    assert np.abs(fc).max() <= 1 / SMALL_HIDDEN and np.abs(fc).max() > 0.9 / SMALL_HIDDEN
    lstm = params["RNN.lstms.1.weight_hh_l0_reverse"].asnumpy()
    assert np.abs(lstm).max() <= 1 / np.sqrt(SMALL_HIDDEN)
    assert np.abs(lstm).max() > 0.9 / np.sqrt(SMALL_HIDDEN)


def test_seeded_initialisation_is_reproducible():
    first, again, other = (dict(_small_model(seed=s).parameters_and_names()) for s in (5, 5, 6))
    for name in ("conv.conv1.weight", "RNN.lstms.0.weight_ih_l0", "fc.module.weight"):
        np.testing.assert_array_equal(first[name].asnumpy(), again[name].asnumpy())
        assert not np.array_equal(first[name].asnumpy(), other[name].asnumpy())


def test_unsupported_rnn_type_is_rejected():
    with pytest.raises(ValueError, match="LSTM"):
        DeepSpeechModel(1, DEFAULT_LABELS, 8, 1, SpectConfig(), rnn_type="GRU")


def test_unidirectional_model_has_forward_parameters_only():
    names = [p.name for p in _small_model(bidirectional=False).get_parameters()]
    assert "RNN.lstms.0.weight_ih_l0" in names
    assert not any(name.endswith("_reverse") for name in names)


def test_dropout_acts_in_training_only_and_adds_no_parameters(real_features):
    plain = DeepSpeechModel(4, DEFAULT_LABELS, SMALL_HIDDEN, SMALL_LAYERS, SpectConfig(),
                            rng=np.random.default_rng(0))
    dropped = DeepSpeechModel(4, DEFAULT_LABELS, SMALL_HIDDEN, SMALL_LAYERS, SpectConfig(),
                              rng=np.random.default_rng(0), dropout=0.5)
    assert [p.name for p in dropped.get_parameters()] == [p.name for p in plain.get_parameters()]
    features, lengths = _pad_batch(real_features, 150)
    plain.set_train(False)
    dropped.set_train(False)
    # Evaluation: dropout is the identity, so the same weights give the same logits.
    np.testing.assert_allclose(_run(dropped, features, lengths)[0], _run(plain, features, lengths)[0],
                               rtol=1e-5, atol=1e-6)
    dropped.set_train(True)
    first, second = _run(dropped, features, lengths)[0], _run(dropped, features, lengths)[0]
    assert not np.allclose(first, second)  # a new mask every call


# --- the LSTM layer against an independent reference -----------------------------------------

def _numpy_lstm(x, w_ih, w_hh, b_ih, b_hh):
    """Single-direction LSTM, gates in (input, forget, cell, output) order; x: (T, D) -> (T, H)."""
    hidden = w_hh.shape[1]
    h, c = np.zeros(hidden), np.zeros(hidden)
    outputs = []
    for frame in x:
        gates = w_ih @ frame + b_ih + w_hh @ h + b_hh
        i, f, g, o = np.split(gates, 4)
        sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.array(outputs)


def _layer_weights(layer, suffix):
    params = {p.name.split(".")[-1]: p.asnumpy().astype(np.float64) for p in layer.get_parameters()}
    return [params[f"{kind}_l0{suffix}"] for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def test_masked_lstm_layer_matches_per_utterance_reference(execution_mode):
    rng = np.random.default_rng(4)
    layer = LSTMLayer(12, 8, masked=True)
    x = rng.standard_normal((9, 3, 12)).astype(np.float32)
    lengths = np.array([9, 4, 6], np.int32)
    output = layer(ms.Tensor(x), ms.Tensor(lengths)).asnumpy()
    forward_w, backward_w = _layer_weights(layer, ""), _layer_weights(layer, "_reverse")
    for b, length in enumerate(lengths):
        frames = x[:length, b].astype(np.float64)
        expected = _numpy_lstm(frames, *forward_w) + _numpy_lstm(frames[::-1], *backward_w)[::-1]
        np.testing.assert_allclose(output[:length, b], expected, atol=1e-5)
        assert np.all(output[length:, b] == 0)


def test_unmasked_lstm_layer_is_the_original_bidirectional_lstm(execution_mode):
    rng = np.random.default_rng(5)
    layer = LSTMLayer(12, 8, masked=False)
    original = nn.LSTM(12, 8, bidirectional=True)
    ours = dict((p.name, p) for p in layer.get_parameters())
    for p in original.get_parameters():
        p.set_data(ms.Tensor(ours[p.name].asnumpy()))
    x = rng.standard_normal((9, 3, 12)).astype(np.float32)
    lengths = np.array([9, 4, 6], np.int32)
    output = layer(ms.Tensor(x), ms.Tensor(lengths)).asnumpy()
    both, _ = original(ms.Tensor(x))
    both = both.asnumpy()
    np.testing.assert_allclose(output, both[..., :8] + both[..., 8:], atol=1e-6)


# --- padding invariance -----------------------------------------------------------------------

def test_logits_do_not_depend_on_padding(execution_mode, real_features):
    model = _small_model()
    short, longer = real_features
    rng = np.random.default_rng(6)
    longest = rng.standard_normal((161, 210)).astype(np.float32)

    alone, alone_len = _run(model, *_pad_batch([short], short.shape[1]))
    batched, batched_len = _run(model, *_pad_batch([longer, short, longest], 210))
    n = output_length(short.shape[1])
    assert alone_len.tolist() == [n] and batched_len[1] == n
    np.testing.assert_allclose(batched[:n, 1], alone[:, 0], atol=1e-4)
    # Nothing is emitted beyond an utterance's frames.
    assert np.all(batched[n:, 1] == 0)

    longer_alone, _ = _run(model, *_pad_batch([longer], longer.shape[1]))
    m = output_length(longer.shape[1])
    np.testing.assert_allclose(batched[:m, 0], longer_alone[:, 0], atol=1e-4)


def test_unmasked_model_depends_on_padding(real_features):
    # The original's defect, kept behind masked=False; also shows the invariance test can fail.
    model = _small_model(masked=False)
    short = real_features[0]
    alone, _ = _run(model, *_pad_batch([short], short.shape[1]))
    padded, _ = _run(model, *_pad_batch([short], short.shape[1] + 60))
    n = output_length(short.shape[1])
    assert np.abs(padded[:n, 0] - alone[:, 0]).max() > 1e-3


def test_masked_and_unmasked_agree_without_padding(real_features):
    short = real_features[0]
    features = _pad_batch([short], short.shape[1])
    np.testing.assert_allclose(_run(_small_model(masked=True), *features)[0],
                               _run(_small_model(masked=False), *features)[0], atol=1e-5)


# --- training -------------------------------------------------------------------------------

def test_gradients_reach_every_parameter_in_graph_mode(real_features):
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        model = _small_model()
        model.set_train(True)
        net = NetWithCTCLoss(model)
        features, lengths = _pad_batch(real_features, 143)
        labels = np.array([[7, 4, 11, 11, 14, 27], [22, 14, 17, 11, 3, 0]], np.int32)
        label_lengths = np.array([6, 5], np.int32)
        weights = model.trainable_params()
        grad_fn = ms.value_and_grad(net, None, weights)
        loss, grads = grad_fn(*[ms.Tensor(a) for a in (features, lengths, labels, label_lengths)])
    finally:
        ms.set_context(mode=previous)
    assert np.isfinite(float(loss.asnumpy())) and float(loss.asnumpy()) > 0
    for param, grad in zip(weights, grads):
        grad = grad.asnumpy()
        assert np.all(np.isfinite(grad)), param.name
        assert np.abs(grad).max() > 0, param.name
