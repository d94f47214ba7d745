"""The input pipeline: a manifest becomes a split of encoded utterances, then padded batches.

`load_split` reads and filters a manifest once; a `BucketSampler` (see `make_sampler`) plans the
batches of each epoch; `build_dataset` turns one epoch's plan into a MindSpore dataset whose item
i is batch i, computed from the audio by parallel workers. Every batch is padded to its bucket's
frame length and label length, so each bucket gives the graph one input shape.

Transcripts are normalised by the tokenizer (`text.CharTokenizer`: accents folded, punctuation to
spaces, apostrophes dropped when `drop_apostrophes`); `Split.references` holds that normalised text,
which is what evaluation scores against. Utterances whose transcript holds digits are dropped and
counted, each named with its manifest line in the log.

Bad audio never stops an epoch. An utterance whose audio cannot be decoded, is truncated or
empty, holds NaN or infinite samples, or whose decoded length disagrees with the manifest's
duration (by more than `manifest.DURATION_TOLERANCE`, or too long for the bucket it was planned
into) keeps its place in the batch -- the plan stays deterministic and equal on every rank -- but
its row of `features` is filled with NaN, and (audio path, reason) is recorded once in the split's
thread-safe `Split.problems` (also `build_dataset(...).problems`). The other rows are untouched.
Consumers rely on the NaN: training skips a step whose loss is not finite (on every rank alike,
leaving BatchNorm's statistics untouched), evaluation leaves out utterances whose logits are not
finite and reports the files named in `problems`. With worker processes (`multiprocessing=True`)
the record stays in the worker; the NaN row still marks the utterance. `python -m
mindaudio.data.manifest --check MANIFEST` finds all such files up front.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import mindspore.dataset as ms_dataset
import numpy as np

from mindaudio.config import SpectConfig, UserError
from mindaudio.data.augment import Augmentation
from mindaudio.data.audio import AudioError, load_audio
from mindaudio.data.features import log_spectrogram, num_frames, num_freq_bins
from mindaudio.data.manifest import Utterance, length_problem, read_manifest
from mindaudio.data.sampler import (Batch, BucketSampler, DropCounts, assign_buckets,
                                    bucket_edges, filter_utterances)
from mindaudio.data.text import CharTokenizer

logger = logging.getLogger(__name__)

COLUMNS = ("features", "feature_lengths", "labels", "label_lengths", "indices")

# Frames by which an utterance's spectrogram may exceed the estimate from its duration (a
# duration rounded in the manifest, a resampled length rounded by soxr). Buckets are padded by
# this much beyond their edge, and the CTC fit check assumes this many frames fewer.
FRAME_MARGIN = 2

# Label padding is rounded up to a multiple of this, so near-equal buckets share a label shape.
LABEL_PAD_MULTIPLE = 8


class DatasetError(UserError, RuntimeError):
    """A batch that cannot be built; the message names the audio file at fault."""


def duration_frames(duration: float, spect: SpectConfig) -> int:
    """Spectrogram frames expected for `duration` seconds of audio at `spect.sample_rate`."""
    return num_frames(max(1, int(round(duration * spect.sample_rate))), spect)


def bucket_frames(edges: Sequence[float], spect: SpectConfig,
                  margin: int = FRAME_MARGIN) -> Tuple[int, ...]:
    """Frames each bucket pads to: the frames of its upper edge plus `margin`."""
    return tuple(duration_frames(edge, spect) + margin for edge in edges)


def label_pad_lengths(buckets: Sequence[int], label_lengths: Sequence[int], num_buckets: int,
                      multiple: int = LABEL_PAD_MULTIPLE) -> Tuple[int, ...]:
    """Label length each bucket pads to, one per bucket.

    The running maximum over this and all shorter buckets, rounded up to `multiple`: the sampler
    may move a few utterances up into a longer bucket, so a bucket's padding must also fit the
    labels of the shorter ones.
    """
    longest = np.zeros(num_buckets, dtype=np.int64)
    for bucket, length in zip(buckets, label_lengths):
        longest[bucket] = max(longest[bucket], length)
    running = np.maximum.accumulate(longest)
    return tuple(int(max(multiple, -(-length // multiple) * multiple)) for length in running)


def encode_transcripts(utterances: Sequence[Utterance], tokenizer: CharTokenizer
                       ) -> Tuple[List[Tuple[int, ...]], Dict[str, int], List[int]]:
    """Label ids of every normalised transcript, how often each character outside the labels
    occurred, and the positions of the transcripts that hold digits (not labelled: dropped).

    Characters outside the labels are replaced by spaces (see `text.CharTokenizer.normalise`) and
    reported once each, with their count; each transcript with digits is logged with its line.
    """
    labels: List[Tuple[int, ...]] = []
    unknown: collections.Counter = collections.Counter()
    with_digits: List[int] = []
    for position, utterance in enumerate(utterances):
        normalised = tokenizer.normalise(utterance.transcript)
        labels.append(tuple(tokenizer.label_ids(normalised.text)))
        if not normalised.has_digits:
            unknown.update(normalised.removed)
        else:
            with_digits.append(position)
            logger.warning("%s: transcript %r holds digits, which have no single spelling in the "
                           "labels: utterance left out", utterance.source or utterance.audio_path,
                           utterance.transcript)
    for char, count in sorted(unknown.items()):
        logger.warning("character %r is not a label: replaced by a space %d time(s) in transcripts",
                       char, count)
    return labels, dict(unknown), with_digits


class ProblemLog:
    """Thread-safe record of the audio files a dataset could not use: (path, reason), each once.

    Filled by the dataset's worker threads while batches are built; read by training and
    evaluation to name the files. Pickles (for worker processes) as a fresh, unshared copy.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._items: Dict[Tuple[str, str], None] = {}

    def record(self, path: str, reason: str) -> None:
        with self._lock:
            self._items.setdefault((str(path), str(reason)), None)

    def items(self) -> List[Tuple[str, str]]:
        """(path, reason) pairs in the order first met."""
        with self._lock:
            return list(self._items)

    def paths(self) -> List[str]:
        return list(dict.fromkeys(path for path, _ in self.items()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        return iter(self.items())

    def __getstate__(self):
        return {"items": self.items()}

    def __setstate__(self, state):
        self._lock = threading.Lock()
        self._items = dict.fromkeys(tuple(item) for item in state["items"])


@dataclass(frozen=True)
class Split:
    """The kept utterances of a manifest with everything batching needs to know about them."""
    manifest: str
    utterances: Tuple[Utterance, ...]
    labels: Tuple[Tuple[int, ...], ...]  # label ids of the normalised transcripts
    edges: Tuple[float, ...]  # bucket upper edges, seconds
    bucket_frames: Tuple[int, ...]  # frames each bucket pads to
    label_pad: Tuple[int, ...]  # label length each bucket pads to
    drops: DropCounts
    unknown_chars: Dict[str, int]
    # Compat (the original's scheme): > 0 means one bucket padded to this many frames, longer
    # clips cropped to it. 0: length buckets, nothing cropped.
    fixed_frames: int = 0
    # (slowest, fastest) speed perturbation the buckets and the CTC check allow for.
    speed_range: Tuple[float, float] = (1.0, 1.0)
    # The normalised transcripts (label characters only): evaluation's references.
    references: Tuple[str, ...] = ()
    # (id, audio path, reason) of the manifest's utterances left out when it was read because no
    # model could transcribe them (empty audio, digits in the transcript).
    left_out: Tuple[Tuple[str, str, str], ...] = ()
    # Audio files found unusable while batches were built (see the module docstring).
    problems: ProblemLog = field(default_factory=ProblemLog, compare=False, repr=False)

    @property
    def durations(self) -> np.ndarray:
        """float64 (utterances,) seconds."""
        return np.array([utterance.duration for utterance in self.utterances], dtype=np.float64)

    def summary(self) -> str:
        hours = float(self.durations.sum()) / 3600.0
        text = (f"{self.manifest}: {len(self.utterances)} utterances kept ({hours:.2f} h), "
                f"{self.drops.total} dropped ({self.drops.too_long} too long, "
                f"{self.drops.empty_label} empty label, {self.drops.label_too_long} label longer "
                f"than the CTC output, {self.drops.digits} with digits in the transcript, "
                f"{self.drops.empty_audio} with empty audio)")
        if self.unknown_chars:
            chars = ", ".join(f"{char!r} x{count}" for char, count
                              in sorted(self.unknown_chars.items()))
            text += f"; characters replaced by spaces: {chars}"
        if len(self.problems):
            text += f"; {len(self.problems)} unusable audio file(s): " + "; ".join(
                f"{path} ({reason})" for path, reason in self.problems)
        return text


def load_split(manifest_path, tokenizer: CharTokenizer, spect: SpectConfig, *,
               bucket_boundaries: Sequence[float] = (), max_duration: Optional[float] = None,
               output_frames: Optional[Callable[[int], int]] = None,
               fixed_frames: int = 0,
               speed_range: Tuple[float, float] = (1.0, 1.0)) -> Split:
    """Read a manifest, encode its transcripts and keep what can be batched.

    max_duration: drop longer utterances (training); None keeps all (evaluation) and closes the
    last bucket at the longest utterance.
    output_frames: the model's output frames for a number of input frames (e.g.
    `models.deepspeech2.output_length`); when given (training), empty labels and labels that
    CTC cannot align within the output frames are dropped. The check assumes FRAME_MARGIN input
    frames fewer than the duration suggests, so a borderline utterance cannot fail the loss.
    Drops are counted in the result and logged in a summary; nothing is cropped.
    fixed_frames: 0 (default) pads each batch to its length bucket. N > 0 reproduces the
    original's scheme (`TrainingConfig.fixed_frames` / `EvalConfig.fixed_frames`): one bucket,
    every batch padded to N frames, longer clips cropped to N (see `PaddedBatchSource`);
    `bucket_boundaries` is then ignored and the CTC check uses the cropped length.
    speed_range: (slowest, fastest) speed perturbation training applies (`Augmentation.speed_range`).
    An utterance keeps the bucket of its recorded duration, but buckets pad to the frames of
    their edge at the slowest speed so a slowed utterance is never cropped, and the CTC check
    uses the duration at the fastest speed so a sped-up label still fits.
    """
    manifest = str(manifest_path)
    utterances = read_manifest(manifest)
    labels, unknown, with_digits = encode_transcripts(utterances, tokenizer)
    # A manifest duration of 0 is an empty recording (a header of 0 frames): no features to
    # compute, so it is left out and named, never counted as a label too long for the output.
    digit_positions = set(with_digits)
    empty_audio = [position for position, utterance in enumerate(utterances)
                   if utterance.duration <= 0 and position not in digit_positions]
    for position in empty_audio:
        logger.warning("%s: %s holds no audio (duration 0): utterance left out",
                       utterances[position].source or manifest, utterances[position].audio_path)
    all_count = len(utterances)
    # (id, audio path, reason) of what is left out here, for evaluation to name in its report.
    untranscribable = tuple((utterances[i].id, utterances[i].audio_path, reason) for i, reason in sorted(
        [(i, "digits in the transcript") for i in with_digits]
        + [(i, "holds no audio (duration 0)") for i in empty_audio]))
    if with_digits or empty_audio:
        left_out = set(with_digits) | set(empty_audio)
        labelled = [i for i in range(len(utterances)) if i not in left_out]
        utterances = [utterances[i] for i in labelled]
        labels = [labels[i] for i in labelled]
        if not utterances:
            raise DatasetError(f"manifest {manifest}: all {all_count} utterances were dropped "
                               f"({len(with_digits)} with digits in the transcript, "
                               f"{len(empty_audio)} with empty audio)")
    durations = [utterance.duration for utterance in utterances]

    if fixed_frames < 0:
        raise ValueError(f"fixed_frames must be >= 0, got {fixed_frames}")
    slowest, fastest = (float(speed) for speed in speed_range)
    if not 0 < slowest <= fastest:
        raise ValueError(f"speed_range must be (slowest, fastest) with 0 < slowest <= fastest, "
                         f"got {speed_range}")
    ctc_frames = None
    if output_frames is not None:
        def ctc_frames(duration: float) -> int:
            frames = duration_frames(duration / fastest, spect) - FRAME_MARGIN
            if fixed_frames:
                frames = min(frames, fixed_frames)
            return output_frames(max(1, frames))

    kept, drops = filter_utterances(durations, labels, max_duration, ctc_frames)
    drops = dataclasses.replace(drops, digits=len(with_digits), empty_audio=len(empty_audio))
    if kept.size == 0:
        raise DatasetError(f"manifest {manifest}: all {all_count} utterances were dropped ({drops})")
    kept_utterances = tuple(utterances[i] for i in kept)
    kept_labels = tuple(labels[i] for i in kept)
    closing = max_duration if max_duration is not None else max(
        utterance.duration for utterance in kept_utterances)
    edges = bucket_edges(() if fixed_frames else bucket_boundaries, closing)
    buckets = assign_buckets([utterance.duration for utterance in kept_utterances], edges)
    split = Split(manifest=manifest, utterances=kept_utterances, labels=kept_labels,
                  edges=edges,
                  bucket_frames=(fixed_frames,) if fixed_frames else bucket_frames(
                      [edge / slowest for edge in edges], spect),
                  label_pad=label_pad_lengths(buckets, [len(label) for label in kept_labels],
                                              len(edges)),
                  drops=drops, unknown_chars=unknown, fixed_frames=int(fixed_frames),
                  speed_range=(slowest, fastest),
                  references=tuple(tokenizer.decode(label) for label in kept_labels),
                  left_out=untranscribable)
    logger.info(split.summary())
    return split


def make_sampler(split: Split, batch_size: int, *, train: bool, batch_frames: int = 0, seed: int = 0,
                 sortagrad: bool = False, rank: int = 0, world_size: int = 1,
                 accumulation_steps: int = 1) -> BucketSampler:
    """The batch planner for a split: shuffled per epoch if `train`, else sorted by length.

    batch_size is per rank and micro-batch, unless `batch_frames` > 0 sizes each bucket's batches
    by that frame budget instead; each optimizer step gives every rank `accumulation_steps`
    batches (see `sampler.plan_epoch`).
    """
    return BucketSampler(split.durations, split.edges, split.bucket_frames, batch_size,
                         batch_frames=batch_frames, seed=seed, shuffle=train, sortagrad=sortagrad,
                         rank=rank, world_size=world_size, accumulation_steps=accumulation_steps)


class PaddedBatchSource:
    """Random-access source for GeneratorDataset: item i is batch i, padded, as numpy arrays.

    Item layout (B utterances, bucket frames T, bucket label length S):
      features float32 (B, 1, freq, T), zero beyond each utterance's frames; a row whose audio
        is unusable is NaN throughout (see the module docstring);
      feature_lengths int32 (B,); labels int32 (B, S) padded with the blank id;
      label_lengths int32 (B,); indices int32 (B,) into `split.utterances`.
    Holds only plain data so worker processes can receive it by pickling.

    With `split.fixed_frames` (compat), a spectrogram longer than the batch's frames is cropped
    to them at a random offset drawn from (utterance index, item), as the original cropped
    training clips at random; the crop is reproducible. Its transcript is kept whole, as there.

    With an `augmentation` (training only), each utterance's waveform is perturbed before its
    features and its spectrogram masked after them (after any compat crop, so masks fall inside
    the frames the model sees), with draws from (augmentation seed, `epoch`, utterance index).
    Without one, features are exactly those of the unaugmented pipeline.
    """

    def __init__(self, split: Split, spect: SpectConfig, batches: Sequence[Batch],
                 blank_id: int, augmentation: Optional[Augmentation] = None, epoch: int = 0):
        self.audio_paths = tuple(utterance.audio_path for utterance in split.utterances)
        self.durations = tuple(float(utterance.duration) for utterance in split.utterances)
        self.labels = split.labels
        self.label_pad = split.label_pad
        self.spect = spect
        self.batches = tuple(batches)
        self.blank_id = int(blank_id)
        self.freq = num_freq_bins(spect)
        self.crop = split.fixed_frames > 0
        self.augmentation = augmentation
        self.epoch = int(epoch)
        self.problems = split.problems
        if augmentation is not None:
            check_augmentation_fits(split, spect, augmentation)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int):
        batch = self.batches[item]
        size, frames, label_pad = len(batch.indices), batch.frames, self.label_pad[batch.bucket]
        features = np.zeros((size, 1, self.freq, frames), dtype=np.float32)
        feature_lengths = np.zeros(size, dtype=np.int32)
        labels = np.full((size, label_pad), self.blank_id, dtype=np.int32)
        label_lengths = np.zeros(size, dtype=np.int32)
        for row, index in enumerate(batch.indices):
            label = self.labels[index]
            if len(label) > label_pad:  # a planning bug, not a data problem: the plan knew it
                raise DatasetError(f"{self.audio_paths[index]}: label of {len(label)} characters "
                                   f"exceeds the {label_pad} of bucket {batch.bucket}")
            labels[row, :len(label)] = label
            label_lengths[row] = len(label)
            spectrogram, problem = self._row_features(index, item, frames, batch.bucket)
            if problem is not None:
                self.problems.record(self.audio_paths[index], problem)
                features[row] = np.nan
                feature_lengths[row] = min(frames, duration_frames(self.durations[index], self.spect))
                continue
            length = spectrogram.shape[1]
            features[row, 0, :, :length] = spectrogram
            feature_lengths[row] = length
        indices = np.asarray(batch.indices, dtype=np.int32)
        return features, feature_lengths, labels, label_lengths, indices

    def _row_features(self, index: int, item: int, frames: int, bucket: int
                      ) -> Tuple[Optional[np.ndarray], Optional[str]]:
        """(spectrogram (freq, length <= frames), None), or (None, why the utterance is unusable)."""
        path = self.audio_paths[index]
        try:
            signal = load_audio(path, self.spect.sample_rate)
        except AudioError as err:
            return None, err.reason
        mismatch = length_problem(signal.shape[0], self.spect.sample_rate, self.durations[index])
        if mismatch is not None:
            return None, mismatch
        rngs = (self.augmentation.generators(self.epoch, index)
                if self.augmentation is not None else None)
        try:
            if rngs is not None:
                signal = self.augmentation.perturb_waveform(signal, rngs)
            warp = self.augmentation.magnitude_warp(rngs) if rngs is not None else None
            spectrogram = log_spectrogram(signal, self.spect, magnitude_warp=warp)
        except Exception as err:  # noqa: BLE001  one file's failure must not end the epoch
            return None, f"cannot compute features: {type(err).__name__}: {err}"
        length = spectrogram.shape[1]
        if length > frames and self.crop:
            offset = int(np.random.default_rng([index, item]).integers(0, length - frames + 1))
            spectrogram = spectrogram[:, offset:offset + frames]
        elif length > frames:
            return None, (f"{length} feature frames exceed the {frames} frames of bucket "
                          f"{bucket} it was planned into from the manifest's duration")
        if rngs is not None:
            spectrogram = self.augmentation.mask_spectrogram(spectrogram, rngs)
        if not np.isfinite(spectrogram).all():
            return None, "features are not finite"
        return spectrogram, None


def check_augmentation_fits(split: Split, spect: SpectConfig, augmentation: Augmentation) -> None:
    """Raise DatasetError unless the split's buckets allow for the augmentation's speeds and it
    works at the features' sample rate."""
    slowest, fastest = augmentation.speed_range
    if slowest < split.speed_range[0] or fastest > split.speed_range[1]:
        raise DatasetError(f"{split.manifest}: speeds {slowest}..{fastest} would not fit the buckets, "
                           f"which allow for {split.speed_range[0]}..{split.speed_range[1]}; pass "
                           f"speed_range=augmentation.speed_range to load_split")
    if augmentation.sample_rate != spect.sample_rate:
        raise DatasetError(f"augmentation at {augmentation.sample_rate} Hz but features at "
                           f"{spect.sample_rate} Hz")


def build_dataset(split: Split, spect: SpectConfig, batches: Sequence[Batch], blank_id: int,
                  num_workers: int = 1, multiprocessing: bool = False,
                  augmentation: Optional[Augmentation] = None, epoch: int = 0
                  ) -> ms_dataset.GeneratorDataset:
    """A `mindspore.dataset.GeneratorDataset` yielding `batches` in order, columns `COLUMNS`.

    num_workers batches are computed at once, in threads by default: features cost about 1 ms
    per second of audio and the heavy parts (decoding, FFT) release the GIL, while worker
    processes must copy every padded batch through shared memory, which measured slower here.
    `multiprocessing` switches to worker processes. The order of `batches` is kept either way.
    augmentation: training only (see `PaddedBatchSource`); `epoch` selects its draws.
    """
    if not batches:
        raise DatasetError(f"no batches to build a dataset from ({split.manifest})")
    source = PaddedBatchSource(split, spect, batches, blank_id, augmentation, epoch)
    # MindSpore refuses more workers than CPUs; a yaml written for a bigger machine still runs.
    workers = max(1, min(int(num_workers), os.cpu_count() or 1))
    dataset = ms_dataset.GeneratorDataset(source, column_names=list(COLUMNS), shuffle=False,
                                          num_parallel_workers=workers,
                                          python_multiprocessing=multiprocessing and workers > 1)
    dataset.problems = split.problems  # the same log: see the module docstring
    return dataset
