"""Signals -> transcripts through the model worker, as `mindaudio.inference.Transcriber` does for files.

A signal no longer than one chunk plus its context goes through the model whole; a longer one is
cut into the same overlapping windows as `Transcriber` (its `ChunkGeometry`), whose feature
matrices are submitted together (so they share batches), and the kept frames are stitched and
decoded once. Features and decoding run in threads, the model on the worker: the event loop only
awaits.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass
from typing import List

import numpy as np

from mindaudio.config import SpectConfig
from mindaudio.data.features import fft_size, log_spectrogram
from mindaudio.inference import ChunkGeometry, Window, plan_windows, seconds_per_output_frame
from mindaudio.serving.audio import BadAudio
from mindaudio.serving.worker import ModelWorker


@dataclass
class Recognition:
    text: str
    words: List[dict]  # {"word", "start", "end"} in seconds
    duration: float  # seconds of audio
    processing_seconds: float

    def as_dict(self) -> dict:
        return {"transcript": self.text, "words": self.words, "duration": round(self.duration, 3),
                "processing_seconds": round(self.processing_seconds, 3)}


class Recognizer:
    """Transcribes float32 mono signals at `spect.sample_rate` with `worker`'s model and `decoder`
    (anything with decode((T', C) log-probs) -> Hypothesis)."""

    def __init__(self, worker: ModelWorker, spect: SpectConfig, decoder, chunk_seconds: float = 20.0,
                 context_seconds: float = 2.0):
        self.worker = worker
        self.spect = spect
        self.decoder = decoder
        self.geometry = ChunkGeometry.from_seconds(spect, chunk_seconds, context_seconds)
        self.whole_samples = (self.geometry.chunk_frames + self.geometry.context_frames) * self.geometry.frame_samples
        self.min_samples = fft_size(spect) // 2 + 1
        # One decoding thread: a beam decoder with an LM is not known to be safe to share between threads.
        self._decoding = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder")

    def close(self) -> None:
        self._decoding.shutdown(wait=False, cancel_futures=True)

    def windows(self, samples: int) -> List[Window]:
        if samples <= self.whole_samples:
            return [Window(0, samples, 0, -1, 0)]  # keep every frame
        return plan_windows(samples, self.geometry, self.spect)

    async def transcribe(self, signal: np.ndarray) -> Recognition:
        """signal: float32 (samples,) at spect.sample_rate. Raises BadAudio when it is too short
        for one feature frame."""
        start = time.perf_counter()
        if signal.size < self.min_samples:
            raise BadAudio(f"only {signal.size} samples at {self.spect.sample_rate} Hz: too short for one "
                           f"feature frame (at least {self.min_samples})")
        windows = self.windows(signal.size)
        features = await asyncio.to_thread(
            lambda: [log_spectrogram(signal[w.start_sample:w.end_sample], self.spect) for w in windows])
        log_probs = await self.worker.log_probs(features)
        pieces = [lp if w.keep_frames < 0 else lp[w.keep_from:w.keep_from + w.keep_frames]
                  for w, lp in zip(windows, log_probs)]
        stitched = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        loop = asyncio.get_running_loop()
        hypothesis = await loop.run_in_executor(self._decoding, self.decoder.decode, stitched)
        frame_seconds = seconds_per_output_frame(self.spect)
        words = [{"word": w.word, "start": round(w.start_frame * frame_seconds, 3),
                  "end": round(w.end_frame * frame_seconds, 3)} for w in hypothesis.words]
        return Recognition(hypothesis.text, words, signal.size / self.spect.sample_rate,
                           time.perf_counter() - start)

