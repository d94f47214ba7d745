"""Reading audio files into mono float32 signals at the rate the features expect."""
from __future__ import annotations

import os
import warnings

import numpy as np
import soundfile
import soxr


class AudioError(Exception):
    """An audio file that cannot be read; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read audio file {self.path}: {reason}")


def resample(signal: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono signal with soxr's high-quality filter.

    signal: (samples,) float; returns float32 (round(samples * target_sr / orig_sr),).
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 1:
        raise ValueError(f"resample expects a mono (samples,) signal, got shape {signal.shape}")
    if orig_sr == target_sr:
        return signal
    return soxr.resample(signal, orig_sr, target_sr).astype(np.float32, copy=False)


def load_audio(path, sample_rate: int) -> np.ndarray:
    """Read any soundfile-readable file as float32 (samples,) in [-1, 1] at `sample_rate` Hz.

    16-bit PCM is scaled by 1/32768 (soundfile's float read, as the original). Multi-channel
    audio is mixed down to the mean of its channels, with a warning naming the file, before
    resampling (cheaper, and the same result since resampling is linear).
    """
    try:
        data, file_sr = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
        raise AudioError(path, str(err)) from err
    if data.shape[1] > 1:
        warnings.warn(f"{os.fspath(path)}: {data.shape[1]} channels mixed down to mono",
                      stacklevel=2)
        signal = data.mean(axis=1, dtype=np.float32)
    else:
        signal = data[:, 0]
    signal = np.ascontiguousarray(signal, dtype=np.float32)
    return resample(signal, int(file_sr), int(sample_rate))


def audio_duration(path) -> float:
    """Duration in seconds from the file header (no decoding)."""
    try:
        info = soundfile.info(os.fspath(path))
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
        raise AudioError(path, str(err)) from err
    if info.samplerate <= 0:
        raise AudioError(path, f"header gives sample rate {info.samplerate}")
    return info.frames / info.samplerate
