"""Log-magnitude spectrograms of a signal, normalised per utterance.

With `SpectConfig.original_compat` (the default) the numbers are those the original computed and
the published checkpoint was trained on: a periodic Hann window whatever `window` says, log1p of
the magnitude, and one mean and one std over the whole spectrogram. Without it, `window` is
honoured and each frequency bin is normalised on its own.

Both modes centre the frames by padding n_fft // 2 samples on each side of the signal. Compat mode
pads with zeros, as the original's `mindaudio.stft` does: its signature sets `pad_mode="constant"`
(its docstring says "reflect", but the code decides). Reflection would change the first and last
frames of a real utterance by up to 0.75 after normalisation. Without compat the frames are padded
by reflection, which is what the recipes trained with `original_compat: False` (e.g. the digits)
were tuned on.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np
import scipy.fft
import scipy.signal

from mindaudio.config import SpectConfig

# The windows `SpectConfig.window` may name: exactly those `analysis_window` computes. Config
# validation asks `check_window` rather than keeping a list of its own.
WINDOW_NAMES = ("hamming", "hann", "blackman", "bartlett")

# Added to |X| before a plain log: below the quantisation noise of 16-bit audio in one bin (~1e-4),
# so it only bounds digital silence.
LOG_FLOOR = 1e-6

# A spectrogram with (near) zero spread (digital silence) is only centred, never divided by ~0.
_MIN_STD = 1e-8


def fft_size(spect: SpectConfig) -> int:
    """Samples per analysis window: n_fft = win_length = int(sample_rate * window_size)."""
    return _whole_samples(spect, "window_size", 2, "an FFT size")


def hop_size(spect: SpectConfig) -> int:
    """Samples between frame starts: int(sample_rate * window_stride)."""
    return _whole_samples(spect, "window_stride", 1, "a hop")


def _whole_samples(spect: SpectConfig, key: str, least: int, what: str) -> int:
    """int(sample_rate * seconds) for the duration `spect.<key>` (seconds); ValueError, naming the
    setting, when that is below `least` samples."""
    seconds = getattr(spect, key)
    samples = int(spect.sample_rate * seconds)
    if samples < least:
        raise ValueError(f"SpectConfig gives {what} of {samples} samples "
                         f"(sample_rate={spect.sample_rate}, {key}={seconds})")
    return samples


def num_fft_bins(spect: SpectConfig) -> int:
    """Frequency bins of one frame's rfft: n_fft // 2 + 1 (161 at 16 kHz with 20 ms windows)."""
    return fft_size(spect) // 2 + 1


def num_freq_bins(spect: SpectConfig) -> int:
    """Rows of the model's features: `spect.mel_bands` when set, else the FFT bins."""
    return spect.mel_bands if spect.mel_bands else num_fft_bins(spect)


def hz_to_mel(hz):
    """Mel scale (O'Shaughnessy's 2595 log10(1 + f / 700)); elementwise."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def check_mel_bands(spect: SpectConfig) -> None:
    """ValueError unless `spect.mel_bands` is 0 or a band count this module can compute: 1 to the
    number of FFT bins, without original_compat (the original's features are FFT bins)."""
    if spect.mel_bands == 0:
        return
    if spect.original_compat:
        raise ValueError("mel bands need original_compat: False (the original's features are FFT bins)")
    if not 1 <= spect.mel_bands <= num_fft_bins(spect):
        raise ValueError(f"must be 0 (FFT bins) or 1-{num_fft_bins(spect)} bands, got {spect.mel_bands}")


def mel_filterbank(spect: SpectConfig) -> np.ndarray:
    """Triangular filters, float32 (mel_bands, fft bins), from 0 Hz to the Nyquist frequency:
    band k rises from centre k-1 to 1 at centre k and falls to 0 at centre k+1 (centres equally
    spaced in mel). A band narrower than the FFT's bin spacing is widened to the nearest bin, so
    none is empty. Peak weight 1 (not area-normalised): a flat spectrum gives equal bands.
    Read-only: one array per geometry, shared by every call."""
    if spect.mel_bands < 1:
        raise ValueError(f"a mel filterbank needs mel_bands >= 1, got {spect.mel_bands}")
    return _mel_weights(spect.sample_rate, num_fft_bins(spect), spect.mel_bands)


# Features ask for the filterbank once per utterance (and per streamed chunk): build it once.
@functools.lru_cache(maxsize=8)
def _mel_weights(sample_rate: int, bins: int, bands: int) -> np.ndarray:
    bin_hz = np.linspace(0.0, sample_rate / 2.0, bins)
    edges_hz = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), bands + 2))
    weights = np.zeros((bands, bins))
    for k in range(bands):
        low, centre, high = edges_hz[k:k + 3]
        rising = (bin_hz - low) / (centre - low)
        falling = (high - bin_hz) / (high - centre)
        weights[k] = np.clip(np.minimum(rising, falling), 0.0, None)
        if not weights[k].any():
            weights[k, int(np.argmin(np.abs(bin_hz - centre)))] = 1.0
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def frequency_bands(magnitude: np.ndarray, spect: SpectConfig) -> np.ndarray:
    """The model's frequency rows of a (fft bins, frames) magnitude spectrogram: itself, or its
    mel bands (`mel_filterbank` x magnitude) when `spect.mel_bands` is set. float32."""
    if not spect.mel_bands:
        return magnitude
    return mel_filterbank(spect) @ np.asarray(magnitude, dtype=np.float32)


def num_frames(num_samples: int, spect: SpectConfig) -> int:
    """Columns of the spectrogram of `num_samples` samples (centred frames, n_fft // 2 padding)."""
    n_fft = fft_size(spect)
    padded = num_samples + 2 * (n_fft // 2)
    if num_samples < 1 or padded < n_fft:
        raise ValueError(f"{num_samples} samples are too few for one frame")
    return 1 + (padded - n_fft) // hop_size(spect)


def check_window(name: str) -> None:
    """ValueError unless `name` is a window this module computes (one of WINDOW_NAMES)."""
    if name not in WINDOW_NAMES:
        raise ValueError(f"unknown window {name!r}; choose one of {', '.join(WINDOW_NAMES)}")


def analysis_window(spect: SpectConfig) -> np.ndarray:
    """The periodic analysis window, float64 (n_fft,): Hann in compat mode, else `spect.window`."""
    name = "hann" if spect.original_compat else spect.window
    check_window(name)
    return scipy.signal.get_window(name, fft_size(spect), fftbins=True)


def padding_mode(spect: SpectConfig) -> str:
    """How the centred frames are padded (a `np.pad` mode): "constant" (zeros) in compat mode, as
    the original's `mindaudio.stft`; "reflect" otherwise."""
    return "constant" if spect.original_compat else "reflect"


def frames_magnitude(frames: np.ndarray, spect: SpectConfig) -> np.ndarray:
    """|rfft| of windowed frames: frames (n, n_fft) float32 samples -> float32 (freq, n).
    The one place the per-frame spectrum is computed (offline and streamed features share it)."""
    windowed = frames * analysis_window(spect).astype(np.float32)
    # scipy's FFT stays in float32 (numpy's would upcast to float64 and be ~2x slower).
    spectrum = scipy.fft.rfft(windowed, n=fft_size(spect), axis=1)
    return np.abs(spectrum).T.astype(np.float32, copy=False)


def magnitude_spectrogram(signal: np.ndarray, spect: SpectConfig) -> np.ndarray:
    """|STFT| of a mono signal: float32 (freq, frames), frames centred by n_fft // 2 samples of
    padding on each side (`padding_mode`: zeros in compat mode, else reflection)."""
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 1:
        raise ValueError(f"expected a mono (samples,) signal, got shape {signal.shape}")
    n_fft, hop = fft_size(spect), hop_size(spect)
    frames_count = num_frames(signal.shape[0], spect)
    padded = np.pad(signal, n_fft // 2, mode=padding_mode(spect))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:frames_count]
    return frames_magnitude(frames, spect)


def normalise(spectrogram: np.ndarray, per_bin: bool) -> np.ndarray:
    """(x - mean) / std over the whole (freq, frames) array, or per frequency row if `per_bin`.

    Statistics in float64 so long utterances do not lose precision; std near zero is treated as
    one so silence gives zeros rather than NaN.
    """
    values = spectrogram.astype(np.float64)
    if per_bin:
        mean = values.mean(axis=1, keepdims=True)
        std = values.std(axis=1, keepdims=True)
        std = np.where(std < _MIN_STD, 1.0, std)
    else:
        mean = values.mean()
        std = values.std()
        std = std if std >= _MIN_STD else 1.0
    return ((values - mean) / std).astype(np.float32)


def log_of_magnitude(magnitude: np.ndarray, spect: SpectConfig) -> np.ndarray:
    """log1p(|X|) in compat mode; otherwise as `spect.log_magnitude` says (log1p or
    log(|X| + LOG_FLOOR)). Elementwise, float32 in and out."""
    if spect.original_compat or spect.log_magnitude == "log1p":
        return np.log1p(magnitude)
    return np.log(magnitude + LOG_FLOOR)


def log_spectrogram(signal: np.ndarray, spect: SpectConfig,
                    magnitude_warp: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
    """The model's input features of a mono signal at `spect.sample_rate`: log-magnitude
    spectrogram (`log_of_magnitude`), normalised per utterance (`SpectConfig.normalisation:
    utterance`) or left as is for a model that normalises with fixed statistics itself (`fixed`).

    signal: (samples,) float in [-1, 1]; returns float32 (num_freq_bins, num_frames).
    magnitude_warp: training augmentation applied to the (freq, frames) magnitude before the log
    (VTLP, see `data.augment`); it must keep the shape.
    """
    magnitude = magnitude_spectrogram(signal, spect)
    if magnitude_warp is not None:
        magnitude = magnitude_warp(magnitude)
    log_magnitude = log_of_magnitude(frequency_bands(magnitude, spect), spect)
    if spect.normalisation == "fixed":
        return log_magnitude
    return normalise(log_magnitude, per_bin=not spect.original_compat)
