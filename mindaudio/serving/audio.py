"""Audio as the server receives it: uploaded files of any soundfile-readable format, and the raw PCM
of live streams; both bounded by `Limits`.

An upload is read exactly as `transcribe.py` reads a file (`mindaudio.data.audio.load_audio`:
channels averaged, soxr resampling, every check for truncated, empty or non-finite audio), from a
temporary copy that is removed at once, so the same file gives the same samples either way.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import soundfile

from mindaudio.config import UserError
from mindaudio.data.audio import AudioError, load_audio

# The live stream's wire format: signed 16-bit little-endian mono PCM at the rate the client declares.
PCM_FORMAT = "pcm_s16le"
PCM_BYTES_PER_SAMPLE = 2
MIN_STREAM_RATE = 4000
MAX_STREAM_RATE = 192000


@dataclass(frozen=True)
class Limits:
    """Per-request bounds. max_upload_bytes: the body of POST /transcribe; max_seconds: the audio
    of one upload or one live stream; max_message_bytes: one WebSocket message."""
    max_upload_bytes: int = 20 * 1024 * 1024
    max_seconds: float = 120.0
    max_message_bytes: int = 1024 * 1024

    def as_dict(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes, "max_seconds": self.max_seconds,
                "max_message_bytes": self.max_message_bytes}


class RequestTooLarge(UserError):
    """A request over one of the `Limits` (HTTP 413)."""


class BadAudio(UserError):
    """Audio the server cannot use (HTTP 400); the message says why."""


_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def decode_upload(data: bytes, filename: str, sample_rate: int, limits: Limits) -> np.ndarray:
    """An uploaded file's bytes -> float32 (samples,) mono at `sample_rate` Hz.

    Raises BadAudio naming `filename` and why (undecodable, truncated, empty, non-finite), and
    RequestTooLarge when it lasts longer than `limits.max_seconds` (checked from the header before
    the audio is decoded, and again after).
    """
    name = filename or "upload"
    if not data:
        raise BadAudio(f"{name}: empty request body: send the audio file's bytes")
    suffix = os.path.splitext(name)[1]
    handle = tempfile.NamedTemporaryFile(prefix="mindaudio-upload-", suffix=suffix if _SAFE_SUFFIX.match(suffix)
                                         else "", delete=False)
    try:
        with handle:
            handle.write(data)
        try:
            info = soundfile.info(handle.name)
        except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
            raise BadAudio(f"{name}: not a readable audio file: {_reason(err, handle.name)}") from None
        if info.samplerate > 0 and info.frames / info.samplerate > limits.max_seconds:
            raise RequestTooLarge(f"{name}: {info.frames / info.samplerate:.1f} s of audio, over the "
                                  f"limit of {limits.max_seconds:g} s")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "channels mixed down": expected for uploads
                signal = load_audio(handle.name, sample_rate)
        except AudioError as err:
            raise BadAudio(f"{name}: {err.reason}") from None
    finally:
        os.unlink(handle.name)
    check_duration(signal.size / sample_rate, limits, name)
    return signal


def _reason(err: BaseException, temp_name: str) -> str:
    return " ".join(str(err).replace(temp_name, "the file").split()) or type(err).__name__


def check_duration(seconds: float, limits: Limits, what: str) -> None:
    if seconds > limits.max_seconds:
        raise RequestTooLarge(f"{what}: {seconds:.1f} s of audio, over the limit of {limits.max_seconds:g} s")


def parse_stream_start(message: dict) -> int:
    """The sample rate a live stream's first message declares ({"sample_rate": N, "format":
    "pcm_s16le"}, format optional). Raises BadAudio saying what is wrong."""
    if not isinstance(message, dict) or "sample_rate" not in message:
        raise BadAudio('the first message must be JSON {"sample_rate": N, "format": "pcm_s16le"}')
    rate = message["sample_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != int(rate):
        raise BadAudio(f"sample_rate must be a whole number of Hz, got {rate!r}")
    rate = int(rate)
    if not MIN_STREAM_RATE <= rate <= MAX_STREAM_RATE:
        raise BadAudio(f"sample_rate {rate} Hz is outside {MIN_STREAM_RATE}..{MAX_STREAM_RATE}")
    fmt = message.get("format", PCM_FORMAT)
    if fmt != PCM_FORMAT:
        raise BadAudio(f"format {fmt!r} is not supported: send {PCM_FORMAT!r} (16-bit little-endian mono PCM)")
    return rate


def pcm_to_float(chunk: bytes) -> np.ndarray:
    """16-bit little-endian PCM bytes -> float32 (samples,) in [-1, 1), scaled by 1/32768 as soundfile
    reads 16-bit files (so a WAV streamed as PCM gives the upload's samples exactly)."""
    if len(chunk) % PCM_BYTES_PER_SAMPLE:
        raise BadAudio(f"a PCM message of {len(chunk)} bytes: {PCM_FORMAT} samples take 2 bytes each")
    return np.frombuffer(chunk, dtype="<i2").astype(np.float32) / np.float32(32768.0)
