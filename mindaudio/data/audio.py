"""Reading audio files into mono float32 signals at the rate the features expect."""
from __future__ import annotations

import os
import struct
import warnings
from typing import Optional, Tuple

import numpy as np
import soundfile
import soxr

from mindaudio.config import UserError

_SOUNDFILE_ERRORS = (RuntimeError, soundfile.LibsndfileError, OSError, ValueError)


class AudioError(UserError):
    """An audio file that cannot be read or holds no usable audio (missing, a directory,
    undecodable, truncated, empty, NaN or infinite samples); the message names the file and why."""

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


def _wav_data_shortfall(path: str) -> Optional[Tuple[int, int]]:
    """For a RIFF/WAVE file whose data chunk is cut short: (bytes its header declares, bytes
    present); else None. libsndfile silently reads such a file as shorter audio."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            offset = 12
            while offset + 8 <= size:
                handle.seek(offset)
                chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
                if chunk_id == b"data":
                    present = size - offset - 8
                    # 0 and 0xFFFFFFFF mark a stream whose length was never written.
                    if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > present:
                        return chunk_size, present
                    return None
                offset += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None


def read_audio(path) -> Tuple[np.ndarray, int]:
    """Decode a soundfile-readable file: float32 (samples, channels) in [-1, 1], and its rate (Hz).

    Raises AudioError naming the file when it is missing or a directory, cannot be decoded, is
    truncated (fewer frames than its header declares), holds no samples, or holds NaN or infinite
    samples (possible in float WAVs): each would otherwise become silently wrong features.
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        raise AudioError(name, "is a directory, not an audio file")
    if not os.path.exists(name):
        raise AudioError(name, "file not found")
    try:
        info = soundfile.info(name)
        data, file_sr = soundfile.read(name, dtype="float32", always_2d=True)
    except _SOUNDFILE_ERRORS as err:
        raise AudioError(name, str(err)) from err
    shortfall = _wav_data_shortfall(name)
    if shortfall is not None:
        raise AudioError(name, f"truncated: its header declares {shortfall[0]} bytes of audio, "
                               f"the file holds {shortfall[1]}")
    if data.shape[0] != info.frames:
        raise AudioError(name, f"truncated: decoded {data.shape[0]} of the {info.frames} frames "
                               f"its header declares")
    if data.shape[0] == 0:
        raise AudioError(name, "empty: the file holds no audio samples")
    if file_sr <= 0:
        raise AudioError(name, f"header gives sample rate {file_sr}")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise AudioError(name, f"{bad} NaN or infinite sample(s) (first at frame "
                               f"{int(np.argmin(finite.all(axis=1)))})")
    return data, int(file_sr)


def load_audio(path, sample_rate: int) -> np.ndarray:
    """Read any soundfile-readable file as float32 (samples,) in [-1, 1] at `sample_rate` Hz.

    16-bit PCM is scaled by 1/32768 (soundfile's float read, as the original). Multi-channel
    audio is mixed down to the mean of its channels, with a warning naming the file, before
    resampling (cheaper, and the same result since resampling is linear). Every failure of
    `read_audio` (missing, undecodable, truncated, empty, non-finite) is an AudioError.
    """
    data, file_sr = read_audio(path)
    if data.shape[1] > 1:
        warnings.warn(f"{os.fspath(path)}: {data.shape[1]} channels mixed down to mono",
                      stacklevel=2)
        signal = data.mean(axis=1, dtype=np.float32)
    else:
        signal = data[:, 0]
    signal = np.ascontiguousarray(signal, dtype=np.float32)
    return resample(signal, file_sr, int(sample_rate))


def audio_duration(path) -> float:
    """Duration in seconds from the file header (no decoding)."""
    if os.path.isdir(os.fspath(path)):
        raise AudioError(path, "is a directory, not an audio file")
    try:
        info = soundfile.info(os.fspath(path))
    except _SOUNDFILE_ERRORS as err:
        raise AudioError(path, str(err)) from err
    if info.samplerate <= 0:
        raise AudioError(path, f"header gives sample rate {info.samplerate}")
    return info.frames / info.samplerate
