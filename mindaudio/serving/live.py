"""Live streams: PCM arrives in pieces, partial transcripts go back while it does, a final one at the end.

The WebSocket endpoint talks to a `LiveSession` only (feed / finish / close), made per stream by a
`SessionFactory`. Two kinds:

- `RedecodingSession`, for today's bidirectional models, which need the whole utterance: keeps the
  audio received so far and re-decodes all of it for a partial transcript, at most once per
  `partial_interval` seconds and never while its previous partial is still running (so a stream
  costs at most one model pass of at most `Limits.max_seconds` of audio at a time). The final
  transcript decodes the whole stream once more (after the partial in flight, if any), exactly as an
  upload of the same samples.
- `IncrementalSession`, for a streaming (unidirectional) recogniser: any object with
  `feed(samples) -> partial text or None` and `finish() -> final text or Hypothesis`, fed float32
  mono at the model's rate. Its calls run on the model worker's thread (it drives the model and
  keeps state between calls) and its partials are sent as they come.
"""
from __future__ import annotations

import abc
import asyncio
import time
from typing import Awaitable, Callable, List, Optional

import numpy as np
import soxr

from mindaudio.data.audio import resample
from mindaudio.inference import seconds_per_output_frame
from mindaudio.serving.audio import Limits, check_duration
from mindaudio.serving.recognition import Recognition, Recognizer

PartialSink = Callable[[str], Awaitable[None]]


class LiveSession(abc.ABC):
    """One live stream. feed: float32 (samples,) mono at the client's rate `sample_rate`."""

    def __init__(self, sample_rate: int, on_partial: PartialSink, limits: Limits):
        self.sample_rate = sample_rate
        self.on_partial = on_partial
        self.limits = limits
        self.received = 0  # samples at the client's rate

    def _count(self, samples: np.ndarray) -> None:
        self.received += samples.size
        check_duration(self.received / self.sample_rate, self.limits, "live stream")

    @abc.abstractmethod
    async def feed(self, samples: np.ndarray) -> None:
        """Take the next samples; may send partials through `on_partial`. Raises RequestTooLarge
        past `limits.max_seconds`."""

    @abc.abstractmethod
    async def finish(self) -> Recognition:
        """The final transcript of everything fed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Free the stream's state; called once whatever happened (also after a disconnect)."""


SessionFactory = Callable[[int, PartialSink, Limits], LiveSession]


class RedecodingSession(LiveSession):
    """Partials by re-decoding the whole stream so far (for bidirectional models)."""

    def __init__(self, recognizer: Recognizer, sample_rate: int, on_partial: PartialSink, limits: Limits,
                 partial_interval: float = 1.0):
        super().__init__(sample_rate, on_partial, limits)
        self.recognizer = recognizer
        self.partial_interval = partial_interval
        self._chunks: List[np.ndarray] = []
        self._decoded = 0  # samples the last partial covered
        self._last_start = time.monotonic()
        self._task: Optional[asyncio.Task] = None
        self._last_text: Optional[str] = None
        self.partials = 0

    def _received(self) -> np.ndarray:
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = [data]
        return data

    async def _signal(self, data: np.ndarray) -> np.ndarray:
        """`data` resampled in one pass to the model's rate (as an upload is), off the event loop."""
        return await asyncio.to_thread(resample, data, self.sample_rate, self.recognizer.spect.sample_rate)

    async def feed(self, samples: np.ndarray) -> None:
        self._count(samples)
        self._chunks.append(samples)
        now = time.monotonic()
        due = now - self._last_start >= self.partial_interval
        if due and (self._task is None or self._task.done()) and self.received > self._decoded:
            self._last_start = now
            self._decoded = self.received
            self._task = asyncio.create_task(self._partial(self._received()))

    async def _partial(self, data: np.ndarray) -> None:
        signal = await self._signal(data)
        if signal.size < self.recognizer.min_samples:
            return
        result = await self.recognizer.transcribe(signal)
        if result.text != self._last_text:
            self._last_text = result.text
            self.partials += 1
            await self.on_partial(result.text)

    async def finish(self) -> Recognition:
        if self._task is not None:
            # Let a running partial finish (at most one pass) rather than cancel it mid-send.
            try:
                await self._task
            except Exception:  # noqa: BLE001  (a partial is best effort; the final pass reports errors)
                pass
            self._task = None
        return await self.recognizer.transcribe(await self._signal(self._received()))

    async def _cancel_partial(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001  (a partial is best effort)
                pass
        self._task = None

    async def close(self) -> None:
        await self._cancel_partial()
        self._chunks = []


def redecoding_factory(recognizer: Recognizer, partial_interval: float = 1.0) -> SessionFactory:
    return lambda rate, sink, limits: RedecodingSession(recognizer, rate, sink, limits, partial_interval)


class IncrementalSession(LiveSession):
    """Adapts a streaming recogniser (feed(samples) -> partial or None, finish() -> final) to a
    live stream: resamples to the model's rate on the fly and runs its calls on the model worker."""

    def __init__(self, recognizer: Recognizer, streaming, sample_rate: int, on_partial: PartialSink,
                 limits: Limits):
        super().__init__(sample_rate, on_partial, limits)
        self.recognizer = recognizer
        self.streaming = streaming
        self._resampler = None
        model_rate = recognizer.spect.sample_rate
        if sample_rate != model_rate:
            self._resampler = soxr.ResampleStream(sample_rate, model_rate, 1, dtype="float32")
        self._last_text: Optional[str] = None
        self._started = time.perf_counter()

    async def _feed_model(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        partial = await self.recognizer.worker.call(self.streaming.feed, samples)
        text = getattr(partial, "text", partial)
        if text is not None and text != self._last_text:
            self._last_text = text
            await self.on_partial(text)

    async def feed(self, samples: np.ndarray) -> None:
        self._count(samples)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        await self._feed_model(np.ascontiguousarray(samples, dtype=np.float32))

    async def finish(self) -> Recognition:
        if self._resampler is not None:
            await self._feed_model(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        final = await self.recognizer.worker.call(self.streaming.finish)
        frame_seconds = seconds_per_output_frame(self.recognizer.spect)
        words = [{"word": w.word, "start": round(w.start_frame * frame_seconds, 3),
                  "end": round(w.end_frame * frame_seconds, 3)} for w in getattr(final, "words", ())]
        return Recognition(getattr(final, "text", final), words, self.received / self.sample_rate,
                           time.perf_counter() - self._started)

    async def close(self) -> None:
        self.streaming = None


def incremental_factory(recognizer: Recognizer, make_streaming: Callable[[], object]) -> SessionFactory:
    """Live sessions driven by a fresh streaming recogniser from `make_streaming()` per stream."""
    return lambda rate, sink, limits: IncrementalSession(recognizer, make_streaming(), rate, sink, limits)
