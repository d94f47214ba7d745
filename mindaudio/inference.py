"""Transcribe audio files of any length with a trained DeepSpeech2, one file at a time (batch 1).

A recording no longer than one chunk window is read whole and goes through exactly the features
evaluation computes. A longer one is streamed from disk (read, mixed to mono and resampled block
by block) and cut into overlapping windows: each window covers `chunk_seconds` of new audio plus
up to `context_seconds` on either side, so the bidirectional LSTMs see context beyond the chunk
edges; only the chunk's own output frames are kept, and the kept frames of all windows, laid end
to end, are exactly the frames the whole recording would give. Memory then depends on the window
length, never on the recording's. The stitched log-probabilities are decoded once, so a beam
search with an LM sees the whole recording.

Output frames are `window_stride * 2` seconds apart (20 ms by default: a 10 ms feature hop and
the first convolution's time stride of 2); output frame j is centred on sample j * that spacing,
which gives each word's start and end time.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, TextIO, Tuple, Union

import numpy as np
import soundfile
import soxr
from tqdm import tqdm

import mindspore as ms

from mindaudio.checkpoint import load_model_weights
from mindaudio.config import Config, SpectConfig, UserError
from mindaudio.data.audio import AudioError, load_audio
from mindaudio.data.features import fft_size, hop_size, log_spectrogram, num_frames
from mindaudio.decoding.hypothesis import Hypothesis, log_softmax
from mindaudio.decoding.select import build_decoder
from mindaudio.models.build import build_model
from mindaudio.models.deepspeech2 import output_length, time_stride
from mindaudio.runtime.compile_cache import CompileCache, CompileOnFirstUse, describe

# A masked model's outputs do not depend on padding, so one file at a time is padded to one of a
# few lengths that files of many lengths share (one compiled graph each, kept by the compile
# cache): the next multiple of a 16th of the length's power-of-two range, so padding adds at most
# 6.25% of the work above 128 frames. (A coarse step costs a batch-1 LSTM in proportion: at 10.4 s
# padding to a multiple of 2 s computed 15% more frames than the file has.)
PAD_STEPS_PER_DOUBLING = 16
MIN_PAD_STEP_FRAMES = 8
# Samples read from the file per block when streaming (at the file's own rate).
STREAM_BLOCK_SAMPLES = 1 << 16

_READ_ERRORS = (RuntimeError, soundfile.LibsndfileError, OSError, ValueError)


def samples_per_output_frame(spect: SpectConfig) -> int:
    """Samples between consecutive output frames: the feature hop times the time stride (320 at 16 kHz)."""
    return hop_size(spect) * time_stride()


def seconds_per_output_frame(spect: SpectConfig) -> float:
    return samples_per_output_frame(spect) / spect.sample_rate


def output_frames_for(num_samples: int, spect: SpectConfig) -> int:
    """Model output frames for a signal of `num_samples` samples."""
    return int(output_length(num_frames(num_samples, spect)))


@dataclass(frozen=True)
class Window:
    """One model input cut from a long signal.

    start_sample, end_sample: the signal slice [start, end) at the features' rate;
    keep_from, keep_frames: the output frames of this window that belong to it (its chunk);
    first_frame: the recording-wide index of the first kept frame.
    """
    start_sample: int
    end_sample: int
    keep_from: int
    keep_frames: int
    first_frame: int


@dataclass(frozen=True)
class ChunkGeometry:
    """Chunk and context lengths in output frames, and samples per output frame."""
    chunk_frames: int
    context_frames: int
    frame_samples: int

    @classmethod
    def from_seconds(cls, spect: SpectConfig, chunk_seconds: float, context_seconds: float) -> "ChunkGeometry":
        frame_seconds = seconds_per_output_frame(spect)
        chunk = int(round(chunk_seconds / frame_seconds))
        context = int(round(context_seconds / frame_seconds))
        if chunk < 1:
            raise ValueError(f"chunk_seconds must be at least one output frame "
                             f"({frame_seconds:g} s), got {chunk_seconds}")
        if context < 1:
            # At least one frame of context also keeps the last window longer than one FFT.
            raise ValueError(f"context_seconds must be at least one output frame "
                             f"({frame_seconds:g} s), got {context_seconds}")
        return cls(chunk, context, samples_per_output_frame(spect))

    def window(self, index: int, total_samples: Optional[int], spect: SpectConfig) -> Optional[Window]:
        """Window `index` of a signal of `total_samples` samples (None: not known yet, i.e. more
        audio follows this window). Returns None when the chunk starts past the last frame."""
        first = index * self.chunk_frames
        start = max(0, (first - self.context_frames) * self.frame_samples)
        end = (first + self.chunk_frames + self.context_frames) * self.frame_samples
        keep = self.chunk_frames
        if total_samples is not None and end >= total_samples:
            # The last window runs to the end of the recording and keeps every frame left.
            total_frames = output_frames_for(total_samples, spect)
            if first >= total_frames:
                return None
            end = total_samples
            keep = total_frames - first
        return Window(start, end, (first * self.frame_samples - start) // self.frame_samples, keep, first)


def plan_windows(total_samples: int, geometry: ChunkGeometry, spect: SpectConfig) -> List[Window]:
    """Every window of a signal of `total_samples` samples, in order."""
    windows = []
    while True:
        window = geometry.window(len(windows), total_samples, spect)
        if window is None:
            return windows
        windows.append(window)
        if window.end_sample == total_samples:
            return windows


def reject_non_finite(signal: np.ndarray, path: str, sample_rate: int, first_sample: int = 0) -> None:
    """AudioError naming `path` and the time of the first bad sample if `signal` ((samples,) or
    (samples, channels) at `sample_rate`) holds NaN or inf: the model would turn it into a
    confident transcript of nothing. first_sample: the position of `signal[0]` in the recording."""
    finite = np.isfinite(signal)
    if not finite.all():
        bad = first_sample + int(np.argwhere(~finite)[0][0])
        raise AudioError(path, f"non-finite sample (NaN or inf) at {bad / sample_rate:.3f} s")


def stream_mono(path: str, sample_rate: int, block_samples: int = STREAM_BLOCK_SAMPLES
                ) -> Iterator[np.ndarray]:
    """The file's signal as float32 mono blocks at `sample_rate`: channels averaged (as
    `load_audio` does), resampled by a streaming soxr resampler. A block with a NaN or inf
    sample raises AudioError naming the file."""
    try:
        handle = soundfile.SoundFile(path)
    except _READ_ERRORS as err:
        raise AudioError(path, str(err)) from err
    with handle:
        resampler = None
        if handle.samplerate != sample_rate:
            resampler = soxr.ResampleStream(handle.samplerate, sample_rate, 1, dtype="float32")
        while True:
            start = handle.tell()
            try:
                block = handle.read(block_samples, dtype="float32", always_2d=True)
            except _READ_ERRORS as err:
                raise AudioError(path, f"read failed after {handle.tell()} samples: {err}") from err
            reject_non_finite(block, path, handle.samplerate, start)
            last = block.shape[0] < block_samples
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if mono.size:
                yield mono
            if last:
                return


class SignalBuffer:
    """The part of a streamed signal still needed: samples [offset, offset + len) of the recording."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self._blocks = blocks
        self._parts: List[np.ndarray] = []
        self.offset = 0
        self.end = 0
        self.exhausted = False

    def fill_to(self, end_sample: int) -> None:
        """Read until the buffer reaches `end_sample` or the recording ends."""
        while self.end < end_sample and not self.exhausted:
            block = next(self._blocks, None)
            if block is None:
                self.exhausted = True
            else:
                self._parts.append(block)
                self.end += block.size

    def slice(self, start: int, end: int) -> np.ndarray:
        data = np.concatenate(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts = [data]
        return data[start - self.offset:end - self.offset]

    def drop_before(self, sample: int) -> None:
        if sample <= self.offset or not self._parts:
            return
        data = np.concatenate(self._parts) if len(self._parts) != 1 else self._parts[0]
        cut = min(sample - self.offset, data.size)
        self._parts = [data[cut:]]
        self.offset += cut


def padded_length(frames: int) -> int:
    """The feature frames a batch-1 input of `frames` frames is padded to (>= frames)."""
    step = max(MIN_PAD_STEP_FRAMES, (1 << max(0, frames.bit_length() - 1)) // PAD_STEPS_PER_DOUBLING)
    return -(-frames // step) * step


def forward_compile_cache(root: str, config: Config) -> Optional[CompileCache]:
    """The compile cache under `root` ('' = none) for the model's forward pass in evaluation mode
    (evaluation, transcription, serving): its graphs depend on the model, the features and the
    labels, and not on the optimiser or the data-parallel size as training's do."""
    if not root:
        return None
    return CompileCache(root, describe("forward", config.ModelConfig, config.SpectConfig, config.labels))


class AcousticModel:
    """Log-probabilities of a feature matrix from a DeepSpeech2 Cell (or an exported MindIR
    GraphCell with the same inputs), at batch 1.

    model: called as model(features (1, 1, F, T) float32, lengths (1,) int32) -> (logits
    (T', 1, C), output_lengths). pad: pad T up to `padded_length(T)` (only valid for a model
    whose outputs do not depend on padding, i.e. `masked`). compiler: compiles
    each padded length through the compile cache at its first use (None: MindSpore compiles it
    at the first call, and nothing is kept across runs).
    """

    def __init__(self, model: ms.nn.Cell, pad: bool = True, compiler: Optional[CompileOnFirstUse] = None):
        self.model = model
        self.pad = pad
        self.compiler = compiler
        if hasattr(model, "set_train"):
            model.set_train(False)

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """features: (F, T) float32 -> (T', C) float32 log-probabilities, T' = output_length(T)."""
        freq, frames = features.shape
        padded = padded_length(frames) if self.pad else frames
        batch = np.zeros((1, 1, freq, padded), dtype=np.float32)
        batch[0, 0, :, :frames] = features
        inputs = (ms.Tensor(batch), ms.Tensor(np.array([frames], dtype=np.int32)))
        if self.compiler is not None:
            self.compiler.before_call(f"transcribe 1x{padded}", self.model, inputs)
        logits, _ = self.model(*inputs)
        return log_softmax(logits.asnumpy()[: int(output_length(frames)), 0])


class TranscriptionError(UserError):
    """A file that cannot be transcribed; the message names the file."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Transcript:
    path: str
    text: str
    duration: float  # seconds of audio
    words: List[dict] = field(default_factory=list)  # {"word", "start", "end"} in seconds
    wall_seconds: float = 0.0
    windows: int = 1

    def as_dict(self) -> dict:
        return {"path": self.path, "transcript": self.text, "duration": round(self.duration, 3),
                "words": self.words, "windows": self.windows,
                "wall_seconds": round(self.wall_seconds, 3)}


@dataclass
class Failure:
    path: str
    error: str

    def as_dict(self) -> dict:
        return {"path": self.path, "error": self.error}


class Transcriber:
    """Audio file -> transcript with word times, through `model` and `decoder`.

    decoder: a GreedyDecoder or BeamSearchDecoder (anything with decode(log_probs) -> Hypothesis).
    chunk_seconds, context_seconds: recordings longer than chunk + context are cut into windows
    of chunk_seconds of new audio with up to context_seconds of context on each side.
    progress: a progress bar per window for recordings cut into windows: True shows it, False
    never, None (default) only when `progress_file` is a terminal.
    progress_file: where the bar goes (default stderr).
    """

    def __init__(self, model: AcousticModel, spect: SpectConfig, decoder, chunk_seconds: float = 20.0,
                 context_seconds: float = 2.0, progress: Optional[bool] = None,
                 progress_file: Optional[TextIO] = None):
        self.model = model
        self.spect = spect
        self.decoder = decoder
        self.progress = progress
        self.progress_file = progress_file
        self.geometry = ChunkGeometry.from_seconds(spect, chunk_seconds, context_seconds)
        # Recordings up to one chunk plus its right context are read whole, as evaluation reads them.
        self.whole_file_samples = (self.geometry.chunk_frames + self.geometry.context_frames) * \
            self.geometry.frame_samples
        # Called with each window and its (freq, frames) feature shape, for callers that watch the windows.
        self.on_window: Optional[Callable[[Window, Tuple[int, int]], None]] = None

    def _features(self, signal: np.ndarray, path: str) -> np.ndarray:
        if signal.size < fft_size(self.spect) // 2 + 1:
            raise TranscriptionError(path, f"only {signal.size} samples at {self.spect.sample_rate} Hz: "
                                           f"too short for one feature frame")
        return log_spectrogram(signal, self.spect)

    def log_probs(self, path: str) -> Tuple[np.ndarray, float, int]:
        """(T', C) log-probabilities of the whole recording, its duration in seconds at the
        features' rate, and how many windows were run."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise TranscriptionError(path, "file not found")
        try:
            info = soundfile.info(path)
        except _READ_ERRORS as err:
            raise AudioError(path, str(err)) from err
        header_samples = info.frames * self.spect.sample_rate / max(info.samplerate, 1)
        if header_samples <= self.whole_file_samples:
            signal = load_audio(path, self.spect.sample_rate)
            reject_non_finite(signal, path, self.spect.sample_rate)
            if signal.size == 0:
                raise TranscriptionError(path, "no audio samples")
            features = self._features(signal, path)
            window = Window(0, signal.size, 0, int(output_length(features.shape[1])), 0)
            result = self.model.log_probs(features)
            if self.on_window is not None:
                self.on_window(window, features.shape)
            return result, signal.size / self.spect.sample_rate, 1
        expected_windows = len(plan_windows(int(header_samples), self.geometry, self.spect))
        with self._progress_bar(path, expected_windows) as bar:
            return self._log_probs_streamed(path, bar)

    def _progress_bar(self, path: str, windows: int) -> tqdm:
        stream = self.progress_file if self.progress_file is not None else sys.stderr
        show = self.progress if self.progress is not None else _is_terminal(stream)
        # A window is seconds of work: redraw after each one (tqdm's default rate limit would
        # skip the last ones on a fast host, and the bar would never show it finished).
        return tqdm(total=windows, desc=os.path.basename(path), unit="window", file=stream,
                    disable=not show, leave=False, dynamic_ncols=True, mininterval=0, miniters=1)

    def _log_probs_streamed(self, path: str, bar: tqdm) -> Tuple[np.ndarray, float, int]:
        buffer = SignalBuffer(stream_mono(path, self.spect.sample_rate))
        pieces: List[np.ndarray] = []
        index = 0
        while True:
            nominal = self.geometry.window(index, None, self.spect)
            buffer.fill_to(nominal.end_sample)
            total = buffer.end if buffer.exhausted else None
            window = self.geometry.window(index, total, self.spect)
            if window is None:
                break
            features = self._features(buffer.slice(window.start_sample, window.end_sample), path)
            log_probs = self.model.log_probs(features)
            kept = log_probs[window.keep_from: window.keep_from + window.keep_frames]
            if kept.shape[0] != window.keep_frames:  # the frame arithmetic above is wrong
                raise RuntimeError(f"{path}: window {index} gave {kept.shape[0]} frames, "
                                   f"expected {window.keep_frames}")
            pieces.append(kept)
            if self.on_window is not None:
                self.on_window(window, features.shape)
            bar.update(1)
            index += 1
            if total is not None and window.end_sample == total:
                break
            next_start = self.geometry.window(index, None, self.spect).start_sample
            buffer.drop_before(next_start)
        if not pieces:
            raise TranscriptionError(path, "no audio samples")
        return np.concatenate(pieces), buffer.end / self.spect.sample_rate, index

    def transcribe(self, path: str) -> Transcript:
        start = time.perf_counter()
        log_probs, duration, windows = self.log_probs(path)
        hypothesis: Hypothesis = self.decoder.decode(log_probs)
        frame_seconds = seconds_per_output_frame(self.spect)
        words = [{"word": w.word, "start": round(w.start_frame * frame_seconds, 3),
                  "end": round(w.end_frame * frame_seconds, 3)} for w in hypothesis.words]
        return Transcript(path=os.fspath(path), text=hypothesis.text, duration=duration, words=words,
                          wall_seconds=time.perf_counter() - start, windows=windows)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def transcribe_files(transcriber: Transcriber, paths: Iterable[str]
                     ) -> Iterator[Union[Transcript, Failure]]:
    """Transcribe each file in turn; a file that cannot be read or is too short yields a
    `Failure` naming it, and the next files are still transcribed."""
    for path in paths:
        try:
            yield transcriber.transcribe(path)
        except (AudioError, TranscriptionError) as err:
            yield Failure(os.fspath(path), str(err))


def build_transcriber(config: Config, checkpoint: str, chunk_seconds: float = 20.0,
                      context_seconds: float = 2.0, decoder=None, progress: Optional[bool] = None,
                      compile_cache_dir: str = "", log: Callable[[str], None] = print) -> Transcriber:
    """The model of `config.ModelConfig` with `checkpoint`'s weights, and the decoder
    `config.EvalConfig` asks for (unless `decoder` is given). progress: see `Transcriber`.
    compile_cache_dir: keep each padded input length's graph there (`Runtime.compile_cache_dir`;
    '' = not kept; an unmasked model's are never kept); `log` gets one line per length compiled or
    loaded."""
    model = build_model(config)
    load_model_weights(model, checkpoint)
    decoder = decoder if decoder is not None else build_decoder(config)
    # An unmasked model runs every file at its own length: too many shapes to keep.
    masked = config.ModelConfig.masked
    compiler = CompileOnFirstUse(forward_compile_cache(compile_cache_dir, config) if masked else None, log)
    return Transcriber(AcousticModel(model, pad=masked, compiler=compiler),
                       config.SpectConfig, decoder, chunk_seconds=chunk_seconds,
                       context_seconds=context_seconds, progress=progress)
