"""Which utterances go into which batch, epoch by epoch: length buckets, SortaGrad, rank shards.

Pure Python and numpy. Utterances are grouped into length buckets whose upper edges are fixed
(seconds), and every batch is padded to its bucket's edge, so the compiled graph sees one input
shape per bucket however the batches are drawn. The plan of an epoch depends only on the inputs,
the seed and the epoch number, so a run resumed at batch k recomputes the plan and skips k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from mindaudio.config import UserError


class SamplerError(UserError, ValueError):
    """A batching request that cannot be satisfied (bad edges, too few utterances, ...)."""


@dataclass(frozen=True)
class DropCounts:
    """How many utterances were left out of training, by reason."""
    too_long: int = 0  # longer than max_duration
    empty_label: int = 0  # no character of the transcript is a label
    label_too_long: int = 0  # CTC cannot align the label within the model's output frames
    digits: int = 0  # the transcript holds digits, which have no single spelling (see data.text)
    empty_audio: int = 0  # the recording holds no samples (duration 0)

    @property
    def total(self) -> int:
        return (self.too_long + self.empty_label + self.label_too_long + self.digits
                + self.empty_audio)


@dataclass(frozen=True)
class Batch:
    """One rank's batch: utterance indices, their bucket, and the frame length to pad to."""
    indices: Tuple[int, ...]
    bucket: int
    frames: int


def ctc_min_frames(label: Sequence[int]) -> int:
    """Fewest output frames a CTC path for `label` needs: its length plus one blank per repeat."""
    label = np.asarray(label)
    if label.size == 0:
        return 0
    return int(label.size + np.count_nonzero(label[1:] == label[:-1]))


def filter_utterances(durations: Sequence[float], labels: Sequence[Sequence[int]],
                      max_duration: Optional[float] = None,
                      output_frames_of_duration: Optional[Callable[[float], int]] = None,
                      ) -> Tuple[np.ndarray, DropCounts]:
    """Indices of the utterances to keep, and how many were dropped for each reason.

    durations: seconds per utterance; labels: label ids per utterance.
    max_duration: drop utterances longer than this (None keeps all lengths).
    output_frames_of_duration: CTC output frames of an utterance lasting that many seconds; if
    given, empty labels and labels needing more frames than that (`ctc_min_frames`) are dropped.
    Reasons are checked in the order too long, empty, label too long; each drop counts once.
    Returns (int64 (kept,) ascending, DropCounts).
    """
    if len(durations) != len(labels):
        raise ValueError(f"{len(durations)} durations but {len(labels)} labels")
    too_long = empty = label_too_long = 0
    kept: List[int] = []
    for index, (duration, label) in enumerate(zip(durations, labels)):
        if max_duration is not None and duration > max_duration:
            too_long += 1
        elif output_frames_of_duration is not None and len(label) == 0:
            empty += 1
        elif (output_frames_of_duration is not None
              and ctc_min_frames(label) > output_frames_of_duration(duration)):
            label_too_long += 1
        else:
            kept.append(index)
    return np.asarray(kept, dtype=np.int64), DropCounts(too_long, empty, label_too_long)


def bucket_edges(boundaries: Sequence[float], max_duration: float) -> Tuple[float, ...]:
    """Upper edges of the buckets (seconds): the boundaries below `max_duration`, then it."""
    if max_duration <= 0:
        raise SamplerError(f"max_duration must be positive, got {max_duration}")
    inner = sorted(float(edge) for edge in boundaries)
    if inner and inner[0] <= 0:
        raise SamplerError(f"bucket boundaries must be positive, got {inner[0]}")
    return tuple(edge for edge in inner if edge < max_duration) + (float(max_duration),)


def assign_buckets(durations: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Bucket of each utterance: the first edge >= its duration. int64 (utterances,)."""
    durations = np.asarray(durations, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.size == 0 or np.any(np.diff(edges) <= 0):
        raise SamplerError(f"bucket edges must be non-empty and increasing, got {edges.tolist()}")
    if durations.size and durations.max() > edges[-1]:
        longest = int(np.argmax(durations))
        raise SamplerError(f"utterance {longest} lasts {durations[longest]:.3f} s, beyond the "
                           f"last bucket edge {edges[-1]} s (filter it out first)")
    return np.searchsorted(edges, durations, side="left").astype(np.int64)


def _sorted_by_duration(items: np.ndarray, durations: np.ndarray) -> np.ndarray:
    # Ties broken by index so the order never depends on how items arrived.
    return items[np.lexsort((items, durations[items]))]


def _global_steps(durations: np.ndarray, buckets: np.ndarray, num_buckets: int,
                  batch_size: int, shares: int,
                  rng: Optional[np.random.Generator]) -> List[Tuple[int, np.ndarray]]:
    """The utterances of every optimizer step, as (bucket, indices), in increasing bucket order.

    A step is cut into `shares` batches (ranks x accumulated micro-batches). Each bucket is cut
    into steps of batch_size * shares; its last step may be smaller but holds at least one
    utterance per share. A remainder smaller than `shares` moves up to the next bucket (its
    longest utterances go, so the padding they get stays small); a remainder left after the last
    bucket joins the last step. rng None means sorted order (SortaGrad, evaluation) instead of
    shuffled.
    """
    capacity = batch_size * shares
    steps: List[Tuple[int, np.ndarray]] = []
    carry = np.empty(0, dtype=np.int64)
    for bucket in range(num_buckets):
        items = np.concatenate([carry, np.flatnonzero(buckets == bucket)])
        if items.size == 0:
            continue
        items = (_sorted_by_duration(items, durations) if rng is None
                 else rng.permutation(items))
        full, remainder = divmod(items.size, capacity)
        if 0 < remainder < shares:
            longest = np.zeros(items.size, dtype=bool)
            longest[np.argsort(durations[items], kind="stable")[-remainder:]] = True
            carry, items = items[longest], items[~longest]
            remainder = 0
        else:
            carry = np.empty(0, dtype=np.int64)
        for start in range(0, items.size, capacity):
            steps.append((bucket, items[start:start + capacity]))
    if carry.size:
        # Fewer than `shares` utterances are left over: merge them into the last step, padded
        # to the last bucket, and re-split it if it now exceeds one step.
        last_bucket, last_items = steps.pop()
        merged = np.concatenate([last_items, carry])
        if rng is None:
            merged = _sorted_by_duration(merged, durations)
        bucket = max(last_bucket, int(buckets[carry].max()))
        if merged.size > capacity and merged.size >= 2 * shares:
            half = (merged.size + 1) // 2
            steps.extend([(bucket, merged[:half]), (bucket, merged[half:])])
        else:
            steps.append((bucket, merged))  # batch_size 1: some batches get 2 utterances
    return steps


def plan_epoch(durations: Sequence[float], edges: Sequence[float], batch_size: int, *,
               epoch: int = 0, seed: int = 0, shuffle: bool = True, sortagrad: bool = False,
               rank: int = 0, world_size: int = 1, accumulation_steps: int = 1,
               ) -> List[Tuple[Tuple[int, ...], int]]:
    """The batches of one rank for one epoch, as (utterance indices, bucket) in visiting order.

    durations: seconds per utterance (all must fit under edges[-1]); edges: bucket upper edges.
    batch_size: utterances per batch, i.e. per rank and micro-batch.
    shuffle: training order, drawn from Generator(SeedSequence([seed, epoch])): members of a
    bucket shuffled, then the steps shuffled. With `sortagrad` epoch 0 is instead sorted by
    length, as is every epoch without `shuffle` (evaluation).
    accumulation_steps K: each optimizer step is cut into world_size * K shares and rank r takes
    shares r*K .. r*K+K-1 in order, so the steps depend only on world_size * K: N ranks with
    K = 1 and one process with K = N visit the same micro-batches in the same steps.
    Every rank gets the same number of batches (K per step); over all ranks each utterance
    appears exactly once; all batches of a step come from the same bucket. Batches hold at most
    batch_size utterances (a step's last batches may be smaller and differ by one; only with
    batch_size 1 and several shares can one batch hold 2).
    """
    if batch_size < 1:
        raise SamplerError(f"batch_size must be >= 1, got {batch_size}")
    if accumulation_steps < 1:
        raise SamplerError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if not 0 <= rank < world_size:
        raise SamplerError(f"rank {rank} outside 0..{world_size - 1}")
    shares = world_size * accumulation_steps
    durations = np.asarray(durations, dtype=np.float64)
    if durations.size < shares:
        raise SamplerError(f"{durations.size} utterances cannot be shared by {world_size} ranks "
                           f"x {accumulation_steps} accumulated micro-batches")
    buckets = assign_buckets(durations, edges)
    sorted_epoch = not shuffle or (sortagrad and epoch == 0)
    # The epoch enters the seed as its own word so (seed, epoch) pairs never collide.
    rng = None if sorted_epoch else np.random.default_rng([seed, epoch])
    steps = _global_steps(durations, buckets, len(edges), batch_size, shares, rng)
    if rng is not None:
        steps = [steps[position] for position in rng.permutation(len(steps))]
    plan = []
    mine = slice(rank * accumulation_steps, (rank + 1) * accumulation_steps)
    for bucket, items in steps:
        for share in np.array_split(items, shares)[mine]:
            plan.append((tuple(int(index) for index in share), bucket))
    return plan


class BucketSampler:
    """Per-epoch batch plans for one rank, each batch carrying the frame length to pad to.

    durations: seconds per utterance; edges: bucket upper edges (seconds); bucket_frames: frames
    to pad each bucket to (one per edge, e.g. from `mindaudio.data.dataset.bucket_frames`).
    """

    def __init__(self, durations: Sequence[float], edges: Sequence[float],
                 bucket_frames: Sequence[int], batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, sortagrad: bool = False, rank: int = 0,
                 world_size: int = 1, accumulation_steps: int = 1):
        if len(bucket_frames) != len(edges):
            raise SamplerError(f"{len(bucket_frames)} bucket frame lengths for "
                               f"{len(edges)} bucket edges")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.edges = tuple(float(edge) for edge in edges)
        self.bucket_frames = tuple(int(frames) for frames in bucket_frames)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.sortagrad = sortagrad
        self.rank = rank
        self.world_size = world_size
        self.accumulation_steps = accumulation_steps
        self._steps = len(self.batches(0))

    def batches(self, epoch: int, start: int = 0) -> List[Batch]:
        """This rank's batches of `epoch`, from batch `start` on (to resume mid-epoch)."""
        plan = plan_epoch(self.durations, self.edges, self.batch_size, epoch=epoch,
                          seed=self.seed, shuffle=self.shuffle, sortagrad=self.sortagrad,
                          rank=self.rank, world_size=self.world_size,
                          accumulation_steps=self.accumulation_steps)
        return [Batch(indices, bucket, self.bucket_frames[bucket])
                for indices, bucket in plan[start:]]

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch and on every rank; K per optimizer step)."""
        return self._steps
