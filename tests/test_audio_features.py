"""Audio loading and log spectrograms, checked against soundfile, numpy and librosa."""
import mindaudio  # noqa: F401  (sets the oneDNN ISA before anything imports mindspore)


import librosa
import numpy as np
import pytest
import soundfile

from mindaudio.config import SpectConfig
from mindaudio.data.audio import AudioError, audio_duration, load_audio, resample
from mindaudio.data.features import (WINDOW_NAMES, check_mel_bands, check_window, log_spectrogram,
                                     mel_filterbank, num_frames, num_freq_bins)


@pytest.fixture(scope="module")
def flac_files(librispeech_mini):
    files = sorted(librispeech_mini.glob("*/*/*/*.flac"))
    assert len(files) >= 3, f"expected LibriSpeech FLAC files under {librispeech_mini}"
    return files


def librosa_log_magnitude(signal, n_fft, hop, window):
    """log1p |STFT| with frames centred by reflection (features without original_compat).

    np.pad reflects the whole signal; librosa's own centring reflects only a tail slice, which
    differs in the last sample when that slice is exactly n_fft // 2 long, so pad first and frame
    uncentred.
    """
    padded = np.pad(signal.astype(np.float64), n_fft // 2, mode="reflect")
    stft = librosa.stft(padded, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window,
                        center=False)
    return np.log1p(np.abs(stft))


def original_features(signal, n_fft, hop):
    """The original's features by an independent route: librosa's STFT, centred with zeros
    (`center=True, pad_mode="constant"`, as the original's mindaudio.stft), periodic Hann,
    n_fft = win_length, log1p of the magnitude, one mean and std over the whole array."""
    stft = librosa.stft(signal.astype(np.float64), n_fft=n_fft, hop_length=hop, win_length=n_fft,
                        window="hann", center=True, pad_mode="constant")
    log_magnitude = np.log1p(np.abs(stft))
    return (log_magnitude - log_magnitude.mean()) / log_magnitude.std()


# --- features ---------------------------------------------------------------------------------

def test_compat_features_equal_the_originals_on_every_frame_of_real_utterances(flac_files):
    # The default config names "hamming" but compat mode must use a periodic Hann window.
    spect = SpectConfig()
    assert spect.original_compat and spect.window == "hamming"
    assert len(flac_files) == 14
    for path in flac_files:
        signal = load_audio(path, 16000)
        expected = original_features(signal, 320, 160)

        features = log_spectrogram(signal, spect)

        assert features.dtype == np.float32
        assert features.shape == expected.shape == (161, expected.shape[1])
        # Every frame, the first and last (where the padding is) included.
        np.testing.assert_allclose(features, expected, rtol=0, atol=1e-4, err_msg=str(path))
        for edge in (0, 1, -2, -1):
            np.testing.assert_allclose(features[:, edge], expected[:, edge], rtol=0, atol=1e-4)


def test_compat_edge_frames_would_differ_with_reflection_padding(flac_files):
    # The check above can fail: reflection (the previous behaviour) moves the edge frames far
    # beyond its tolerance while the inner frames stay equal.
    signal = load_audio(flac_files[0], 16000)
    zeros = log_spectrogram(signal, SpectConfig())
    reflected = librosa_log_magnitude(signal, 320, 160, "hann")
    reflected = (reflected - reflected.mean()) / reflected.std()
    edges = np.abs(zeros[:, [0, -1]] - reflected[:, [0, -1]]).max()
    inner = np.abs(zeros[:, 2:-2] - reflected[:, 2:-2]).max()
    assert edges > 0.05 and inner < 1e-2


def test_compat_ignores_window_name():
    signal = np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32)
    hann = log_spectrogram(signal, SpectConfig(window="hann"))
    blackman_named = log_spectrogram(signal, SpectConfig(window="blackman"))
    np.testing.assert_array_equal(hann, blackman_named)


@pytest.mark.parametrize("window", ["hamming", "hann", "blackman", "bartlett"])
def test_non_compat_features_match_librosa_with_per_bin_normalisation(flac_files, window):
    signal, _ = soundfile.read(flac_files[0], dtype="float32")
    spect = SpectConfig(window=window, original_compat=False)
    log_magnitude = librosa_log_magnitude(signal, 320, 160, window)
    mean = log_magnitude.mean(axis=1, keepdims=True)
    std = log_magnitude.std(axis=1, keepdims=True)
    expected = (log_magnitude - mean) / std

    features = log_spectrogram(signal, spect)

    assert features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=5e-5)
    # Per-bin normalisation: every row has zero mean and unit spread.
    np.testing.assert_allclose(features.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(features.std(axis=1), 1.0, atol=1e-4)


def test_mel_bands_match_librosa_slaney_free_triangles_on_real_speech(flac_files):
    # librosa's filterbank with htk=True uses the same mel formula; without its area
    # normalisation (norm=None) its triangles peak at 1 like ours.
    spect = SpectConfig(window="hann", original_compat=False, log_magnitude="log", mel_bands=40)
    reference = librosa.filters.mel(sr=16000, n_fft=320, n_mels=40, fmin=0.0, fmax=8000.0, htk=True, norm=None)
    np.testing.assert_allclose(mel_filterbank(spect), reference, atol=1e-5)
    signal, _ = soundfile.read(flac_files[0], dtype="float32")
    padded = np.pad(signal.astype(np.float64), 160, mode="reflect")
    magnitude = np.abs(librosa.stft(padded, n_fft=320, hop_length=160, window="hann", center=False))
    bands = np.log(reference @ magnitude + 1e-6)
    expected = (bands - bands.mean(axis=1, keepdims=True)) / bands.std(axis=1, keepdims=True)
    features = log_spectrogram(signal, spect)
    assert features.shape == (40, num_frames(signal.size, spect)) and num_freq_bins(spect) == 40
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=2e-4)


def test_narrow_mel_bands_are_never_empty_and_bad_counts_are_named():
    # 8 kHz with 10 ms windows: 41 bins of 100 Hz, narrower than the lowest of 30 mel bands' spacing.
    spect = SpectConfig(sample_rate=8000, window_size=0.01, window_stride=0.01, original_compat=False,
                        mel_bands=30)
    weights = mel_filterbank(spect)
    assert weights.shape == (30, 41) and (weights.max(axis=1) > 0).all()
    check_mel_bands(spect)
    for bad, why in ((dict(mel_bands=42), "1-41 bands"), (dict(original_compat=True), "original_compat")):
        with pytest.raises(ValueError, match=why):
            check_mel_bands(SpectConfig(**{**spect.__dict__, **bad}))


def test_non_compat_windows_differ():
    signal = np.random.default_rng(1).uniform(-0.5, 0.5, 4000).astype(np.float32)
    hamming = log_spectrogram(signal, SpectConfig(window="hamming", original_compat=False))
    hann = log_spectrogram(signal, SpectConfig(window="hann", original_compat=False))
    assert np.abs(hamming - hann).max() > 1e-3


def test_log_magnitude_log_matches_numpy_and_makes_loudness_irrelevant(flac_files):
    signal, _ = soundfile.read(flac_files[0], dtype="float32")
    spect = SpectConfig(window="hann", original_compat=False, log_magnitude="log")
    padded = np.pad(signal.astype(np.float64), 160, mode="reflect")
    stft = librosa.stft(padded, n_fft=320, hop_length=160, window="hann", center=False)
    log_magnitude = np.log(np.abs(stft) + 1e-6)
    expected = (log_magnitude - log_magnitude.mean(axis=1, keepdims=True)) / log_magnitude.std(axis=1, keepdims=True)
    features = log_spectrogram(signal, spect)
    # A plain log magnifies the float32 FFT's rounding in near-silent bins (1% of them differ
    # by up to ~5e-3 from float64); log1p's features agree to 5e-5 everywhere.
    assert np.abs(features - expected).mean() < 1e-4
    np.testing.assert_allclose(features, expected, atol=2e-2)

    # 20 dB quieter: a constant shift of log |X| (where |X| is well above the floor), which the
    # per-bin mean removes; log1p instead changes the features' shape.
    quiet = signal * np.float32(0.1)
    change_with_log = np.abs(log_spectrogram(quiet, spect) - features).mean()
    log1p = SpectConfig(window="hann", original_compat=False)
    change_with_log1p = np.abs(log_spectrogram(quiet, log1p) - log_spectrogram(signal, log1p)).mean()
    assert change_with_log < 0.01 and change_with_log1p > 5 * change_with_log  # measured 0.0037, 0.034


@pytest.mark.parametrize("name", ["kaiser", "hanning"])
def test_unknown_window_is_rejected_when_honoured(name):
    with pytest.raises(ValueError, match=name):
        log_spectrogram(np.zeros(1600, np.float32), SpectConfig(window=name, original_compat=False))
    with pytest.raises(ValueError, match=name):
        check_window(name)


@pytest.mark.parametrize("name", WINDOW_NAMES)
def test_every_accepted_window_name_is_computed(name):
    check_window(name)
    features = log_spectrogram(np.random.default_rng(3).normal(0, 0.1, 1600).astype(np.float32),
                               SpectConfig(window=name, original_compat=False))
    assert np.isfinite(features).all()


def test_other_sample_rate_and_window_sizes_match_librosa():
    spect = SpectConfig(sample_rate=8000, window_size=0.025, window_stride=0.01)
    signal = np.random.default_rng(2).normal(0, 0.1, 8000 + 37).astype(np.float32)
    expected = original_features(signal, 200, 80)
    features = log_spectrogram(signal, spect)
    assert num_freq_bins(spect) == 101 == features.shape[0]
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.filterwarnings("ignore:n_fft=.*too large:UserWarning")
@pytest.mark.parametrize("num_samples", [1, 2, 159, 160, 161, 319, 320, 321, 16000, 52345])
@pytest.mark.parametrize("window_size,window_stride", [(0.02, 0.01), (0.025, 0.01),
                                                       (0.0201, 0.0107)])
def test_frame_count_formula_matches_actual_spectrogram(num_samples, window_size, window_stride):
    spect = SpectConfig(window_size=window_size, window_stride=window_stride)
    signal = np.random.default_rng(num_samples).uniform(-1, 1, num_samples).astype(np.float32)
    n_fft = int(16000 * window_size)
    expected = librosa.stft(signal, n_fft=n_fft, hop_length=int(16000 * window_stride),
                            center=True, pad_mode="reflect").shape
    features = log_spectrogram(signal, spect)
    assert features.shape == expected
    assert num_frames(num_samples, spect) == features.shape[1]
    assert num_freq_bins(spect) == n_fft // 2 + 1 == features.shape[0]


def test_default_geometry():
    assert num_freq_bins(SpectConfig()) == 161
    # Centred framing: one frame per hop plus one (1 s at 16 kHz -> 101 frames).
    assert num_frames(16000, SpectConfig()) == 101


def test_empty_signal_is_rejected():
    with pytest.raises(ValueError, match="too few"):
        log_spectrogram(np.zeros(0, np.float32), SpectConfig())


@pytest.mark.parametrize("original_compat", [True, False])
def test_silence_gives_zeros_not_nan(original_compat):
    features = log_spectrogram(np.zeros(4000, np.float32),
                               SpectConfig(original_compat=original_compat))
    assert np.all(np.isfinite(features))
    np.testing.assert_array_equal(features, 0.0)


def test_stereo_signal_is_rejected_by_features():
    with pytest.raises(ValueError, match="mono"):
        log_spectrogram(np.zeros((2, 4000), np.float32), SpectConfig())


# --- audio loading ----------------------------------------------------------------------------

def test_pcm16_wav_is_scaled_by_32768(tmp_path):
    raw = np.array([0, 1, -1, 16384, -32768, 32767, 1000], dtype=np.int16)
    path = tmp_path / "pcm.wav"
    soundfile.write(path, raw, 16000, subtype="PCM_16")
    signal = load_audio(path, 16000)
    assert signal.dtype == np.float32 and signal.shape == raw.shape
    np.testing.assert_array_equal(signal, raw.astype(np.float64) / 32768.0)


def test_flac_and_wav_load_equal(flac_files, tmp_path):
    flac = flac_files[0]
    pcm, sample_rate = soundfile.read(flac, dtype="int16")
    wav = tmp_path / "same.wav"
    soundfile.write(wav, pcm, sample_rate, subtype="PCM_16")
    from_flac = load_audio(flac, 16000)
    from_wav = load_audio(wav, 16000)
    np.testing.assert_array_equal(from_flac, from_wav)
    np.testing.assert_array_equal(from_flac, pcm / 32768.0)


def test_audio_duration_reads_header(flac_files):
    for path in flac_files[:3]:
        pcm, sample_rate = soundfile.read(path, dtype="int16")
        assert audio_duration(path) == pytest.approx(len(pcm) / sample_rate)


def test_fsdd_8k_resampled_to_16k(digits_corpus):
    path = sorted((digits_corpus / "recordings").glob("*.flac"))[0]
    original, sample_rate = soundfile.read(path, dtype="float32")
    assert sample_rate == 8000
    upsampled = load_audio(path, 16000)
    assert upsampled.dtype == np.float32
    assert abs(len(upsampled) - 2 * len(original)) <= 1
    # Band-limited content survives a round trip back to 8 kHz.
    back = resample(upsampled, 16000, 8000)
    n = min(len(back), len(original))
    correlation = np.corrcoef(back[:n], original[:n])[0, 1]
    assert correlation > 0.99


def test_resampling_preserves_a_sine_frequency(tmp_path):
    frequency, seconds = 1234.0, 1.0
    t = np.arange(int(8000 * seconds)) / 8000
    path = tmp_path / "sine8k.wav"
    soundfile.write(path, 0.5 * np.sin(2 * np.pi * frequency * t), 8000, subtype="PCM_16")

    signal = load_audio(path, 16000)

    assert len(signal) == 16000
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    peak_hz = np.argmax(spectrum) * 16000 / len(signal)
    assert abs(peak_hz - frequency) <= 1.0
    # Amplitude kept away from the edges (the abrupt start and end ring in any resampler).
    middle = signal[4000:12000]
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resample_same_rate_is_identity():
    signal = np.random.default_rng(3).uniform(-1, 1, 1000).astype(np.float32)
    np.testing.assert_array_equal(resample(signal, 16000, 16000), signal)


def test_stereo_is_mixed_down_with_a_warning(tmp_path):
    t = np.arange(1600) / 16000
    left = 0.25 * np.sin(2 * np.pi * 300 * t)
    right = 0.5 * np.sin(2 * np.pi * 700 * t)
    path = tmp_path / "stereo_take.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match="stereo_take.wav"):
        signal = load_audio(path, 16000)
    assert signal.shape == (1600,)
    np.testing.assert_allclose(signal, (left + right) / 2, atol=1e-7)


def test_corrupt_file_raises_audio_error_naming_it(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 4)
    with pytest.raises(AudioError, match="broken.wav") as caught:
        load_audio(path, 16000)
    assert caught.value.path == str(path)
    with pytest.raises(AudioError, match="broken.wav"):
        audio_duration(path)


def test_missing_file_raises_audio_error_naming_it(tmp_path):
    path = tmp_path / "nowhere.flac"
    with pytest.raises(AudioError, match="nowhere.flac"):
        load_audio(path, 16000)
    with pytest.raises(AudioError, match="nowhere.flac"):
        audio_duration(path)


def test_audio_errors_are_user_errors():
    from mindaudio.config import UserError
    assert issubclass(AudioError, UserError)


def test_directory_is_named_as_a_directory_not_a_missing_file(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path, 16000)
    with pytest.raises(AudioError, match="is a directory"):
        audio_duration(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_an_audio_error_naming_the_file(tmp_path, bad):
    signal = np.random.default_rng(4).normal(0, 0.1, 1600).astype(np.float32)
    signal[700] = bad
    path = tmp_path / "poisoned.wav"
    soundfile.write(str(path), signal, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"poisoned\.wav.*1 NaN or infinite sample\(s\) \(first at frame 700\)"):
        load_audio(path, 16000)
    signal[700] = 0.0
    soundfile.write(str(path), signal, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, 16000), signal)  # the same file, healed, reads


def test_truncated_wav_is_an_audio_error_not_shorter_audio(tmp_path, flac_files):
    signal, _ = soundfile.read(flac_files[0], dtype="int16")
    whole = tmp_path / "whole.wav"
    soundfile.write(str(whole), signal, 16000, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    # libsndfile alone reads the cut file as shorter audio without a word.
    assert 0 < soundfile.info(str(cut)).frames < len(signal)
    with pytest.raises(AudioError, match=r"cut\.wav.*truncated"):
        load_audio(cut, 16000)
    assert load_audio(whole, 16000).shape == signal.shape


def test_truncated_flac_is_an_audio_error(tmp_path, flac_files):
    data = flac_files[0].read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut\.flac"):
        load_audio(cut, 16000)


def test_zero_sample_file_is_an_audio_error_saying_empty(tmp_path):
    path = tmp_path / "silent.wav"
    soundfile.write(str(path), np.zeros(0, np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"silent\.wav.*empty"):
        load_audio(path, 16000)
