"""Fixed feature statistics for `SpectConfig.normalisation: fixed`: the mean and standard deviation
of each frequency bin of the log-magnitude spectrogram, over every frame of a manifest's
recordings. A streaming model normalises with these instead of each recording's own statistics,
which would need the whole recording before the first frame could be used.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np

from mindaudio.config import SpectConfig
from mindaudio.data.audio import AudioError, load_audio
from mindaudio.data.features import (fft_size, frequency_bands, log_of_magnitude, magnitude_spectrogram,
                                     num_freq_bins)
from mindaudio.data.manifest import ManifestError, read_manifest

# A bin that never varies (e.g. digital silence only) is centred, never divided by ~0.
MIN_STD = 1e-5


class StatisticsAccumulator:
    """Per-bin running sums in float64, so many frames do not lose precision."""

    def __init__(self, num_bins: int):
        self.count = 0
        self.total = np.zeros(num_bins, np.float64)
        self.total_squares = np.zeros(num_bins, np.float64)

    def add(self, log_magnitude: np.ndarray) -> None:
        """log_magnitude: (freq, frames) of one recording."""
        values = log_magnitude.astype(np.float64)
        self.count += values.shape[1]
        self.total += values.sum(axis=1)
        self.total_squares += np.square(values).sum(axis=1)

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """(mean, std), each float32 (freq,); std floored at MIN_STD."""
        if self.count == 0:
            raise ValueError("no frames to estimate feature statistics from")
        mean = self.total / self.count
        variance = np.maximum(self.total_squares / self.count - np.square(mean), 0.0)
        std = np.maximum(np.sqrt(variance), MIN_STD)
        return mean.astype(np.float32), std.astype(np.float32)


def signal_statistics(signals: Iterable[np.ndarray], spect: SpectConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Per-bin (mean, std), float32 (num_freq_bins,), of the log-magnitude spectrogram (before
    any normalisation) over all frames of `signals` ((samples,) float at spect.sample_rate)."""
    accumulator = StatisticsAccumulator(num_freq_bins(spect))
    for signal in signals:
        accumulator.add(log_of_magnitude(frequency_bands(magnitude_spectrogram(signal, spect), spect), spect))
    return accumulator.result()


def manifest_statistics(manifest_path: str, spect: SpectConfig, max_utterances: Optional[int] = None,
                        seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per-bin (mean, std) over a manifest's recordings (all of them, or `max_utterances` drawn
    with `seed`); unreadable or empty recordings are skipped, as training skips them.
    Raises ManifestError naming the manifest when it cannot be read or holds no usable audio."""
    utterances = read_manifest(manifest_path)
    if max_utterances is not None and len(utterances) > max_utterances:
        chosen = np.random.default_rng(seed).choice(len(utterances), max_utterances, replace=False)
        utterances = [utterances[i] for i in sorted(chosen)]

    def signals():
        for utterance in utterances:
            try:
                signal = load_audio(utterance.audio_path, spect.sample_rate)
            except AudioError:
                continue
            if signal.size > fft_size(spect) // 2 and np.isfinite(signal).all():
                yield signal

    try:
        return signal_statistics(signals(), spect)
    except ValueError:
        raise ManifestError(f"{manifest_path}: no readable audio to estimate feature statistics from") from None
