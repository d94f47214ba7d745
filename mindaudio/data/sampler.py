"""Which utterances go into which batch, epoch by epoch: length buckets, SortaGrad, rank shards.

Pure Python and numpy. Utterances are grouped into length buckets whose upper edges are fixed
(seconds), and every batch is padded to its bucket's edge, so the compiled graph sees one input
shape per bucket however the batches are drawn. The plan of an epoch depends only on the inputs,
the seed and the epoch number, so a run resumed at batch k recomputes the plan and skips k.

Batches are sized by count (`batch_size` utterances each) or by a frame budget (`batch_frames`:
each bucket's batch holds as many utterances as fit in the budget at that bucket's padded frame
length, so short buckets carry many utterances and long ones few; see `batch_sizes_for_frames`).
With a frame budget every bucket is filled to whole optimizer steps from the longest utterances
of the buckets below it, so each bucket is one input shape (B_b, T_b) and only the shortest
bucket can end with a smaller step: the number of compiled shapes stays at about one per bucket.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

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


def batch_sizes_for_frames(bucket_frames: Sequence[int], batch_frames: int,
                           used_buckets: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """Utterances per batch of each bucket under a budget of `batch_frames` padded frames.

    bucket_frames: frames each bucket pads to; batch_frames: the budget (batch x padded frames).
    A bucket's batch size is floor(batch_frames / its frames). Raises SamplerError naming
    `TrainingConfig.batch_frames` when the budget cannot hold one utterance of a bucket in
    `used_buckets` (default: all); an unused bucket gets 1.
    """
    if batch_frames < 1:
        raise SamplerError(f"TrainingConfig.batch_frames must be >= 1 to size batches by frames, "
                           f"got {batch_frames}")
    used = set(range(len(bucket_frames)) if used_buckets is None else
               (int(bucket) for bucket in used_buckets))
    too_long = [bucket for bucket in used if int(bucket_frames[bucket]) > batch_frames]
    if too_long:
        # Name the longest such bucket: its padding is the smallest budget that works.
        bucket = max(too_long, key=lambda b: int(bucket_frames[b]))
        frames = int(bucket_frames[bucket])
        raise SamplerError(f"TrainingConfig.batch_frames {batch_frames} cannot hold one "
                           f"utterance of bucket {bucket}, which pads to {frames} frames: "
                           f"use at least {frames} (or a smaller max_duration)")
    sizes = [max(1, int(batch_frames) // int(frames)) for frames in bucket_frames]
    return tuple(sizes)


def _whole_step_members(durations: np.ndarray, buckets: np.ndarray,
                        capacities: Sequence[int]) -> np.ndarray:
    """The bucket each utterance is padded to so that every bucket but the lowest used one holds
    a whole number of steps (`capacities[b]` utterances each).

    Walking down from the longest utterance: a bucket whose own utterances do not fill its last
    step takes the longest utterances below it (which fit, padded a little more); what is left
    at the bottom forms the lowest bucket's steps, the last of which may be partial. The result
    depends only on the durations (ties by index), never on the epoch. int64 (utterances,).
    """
    order = np.lexsort((np.arange(durations.size), durations))  # ascending, ties by index
    ordered_buckets = buckets[order]
    members = np.empty_like(buckets)
    end = order.size
    while end > 0:
        bucket = int(ordered_buckets[end - 1])
        own = end - int(np.searchsorted(ordered_buckets[:end], bucket, side="left"))
        take = min(end, -(-own // capacities[bucket]) * capacities[bucket])
        members[order[end - take:end]] = bucket
        end -= take
    return members


def _whole_steps(durations: np.ndarray, buckets: np.ndarray, num_buckets: int,
                 batch_sizes: Sequence[int], shares: int,
                 rng: Optional[np.random.Generator]) -> List[Tuple[int, np.ndarray]]:
    """Steps of the frame-budget plan, as (bucket, indices) in increasing bucket order.

    Bucket b's steps hold batch_sizes[b] * shares utterances each (see `_whole_step_members`);
    only the lowest used bucket may end with a smaller step. Should that step hold fewer than
    `shares` utterances (one per rank and micro-batch) it merges with its neighbour (the same
    bucket's previous step, else the next bucket's first), split in two when that leaves at
    least `shares` each (batch size 1: one step, some batches of 2). rng None means sorted
    order instead of shuffled.
    """
    capacities = [size * shares for size in batch_sizes]
    members = _whole_step_members(durations, buckets, capacities)
    steps: List[Tuple[int, np.ndarray]] = []
    for bucket in range(num_buckets):
        items = np.flatnonzero(members == bucket)
        if items.size == 0:
            continue
        items = (_sorted_by_duration(items, durations) if rng is None
                 else rng.permutation(items))
        capacity = capacities[bucket]
        steps.extend((bucket, items[start:start + capacity])
                     for start in range(0, items.size, capacity))
    lowest_steps = sum(1 for bucket, _ in steps if bucket == steps[0][0])
    short = lowest_steps - 1  # the lowest bucket's last step: the only one that can be short
    if len(steps) > 1 and steps[short][1].size < shares:
        # Merge it with its neighbour (the same bucket's previous step if there is one, else the
        # next bucket's first step), then split again where that leaves >= `shares` each.
        first = short - 1 if short > 0 else short
        bucket = max(steps[first][0], steps[first + 1][0])
        merged = np.concatenate([steps[first][1], steps[first + 1][1]])
        if rng is None:
            merged = _sorted_by_duration(merged, durations)
        pieces = 2 if merged.size >= 2 * shares else 1
        steps[first:first + 2] = [(bucket, piece) for piece in np.array_split(merged, pieces)]
    return steps


def plan_epoch(durations: Sequence[float], edges: Sequence[float],
               batch_size: Union[int, Sequence[int]], *,
               epoch: int = 0, seed: int = 0, shuffle: bool = True, sortagrad: bool = False,
               rank: int = 0, world_size: int = 1, accumulation_steps: int = 1,
               ) -> List[Tuple[Tuple[int, ...], int]]:
    """The batches of one rank for one epoch, as (utterance indices, bucket) in visiting order.

    durations: seconds per utterance (all must fit under edges[-1]); edges: bucket upper edges.
    batch_size: utterances per batch, i.e. per rank and micro-batch: one count for every bucket,
    or one per bucket (the frame budget's, `batch_sizes_for_frames`). Per-bucket sizes make
    whole steps: every bucket but the lowest used one is filled to a whole number of steps with
    the longest utterances of the buckets below it, so each bucket is one input shape and only
    the lowest bucket may end with a smaller step (`_whole_steps`); utterances are then padded
    up to beyond their own bucket, never cropped.
    shuffle: training order, drawn from Generator(SeedSequence([seed, epoch])): members of a
    bucket shuffled, then the steps shuffled. With `sortagrad` epoch 0 is instead sorted by
    length, as is every epoch without `shuffle` (evaluation).
    accumulation_steps K: each optimizer step is cut into world_size * K shares and rank r takes
    shares r*K .. r*K+K-1 in order, so the steps depend only on world_size * K: N ranks with
    K = 1 and one process with K = N visit the same micro-batches in the same steps.
    Every rank gets the same number of batches (K per step); over all ranks each utterance
    appears exactly once; all batches of a step come from the same bucket. Batches hold at most
    their bucket's batch_size utterances (a step's last batches may be smaller and differ by one;
    only with batch_size 1 and several shares can one batch hold 2).
    """
    per_bucket = not isinstance(batch_size, (int, np.integer))
    sizes = tuple(int(size) for size in batch_size) if per_bucket else (int(batch_size),)
    if per_bucket and len(sizes) != len(edges):
        raise SamplerError(f"{len(sizes)} batch sizes for {len(edges)} bucket edges")
    if min(sizes) < 1:
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
    if per_bucket:
        steps = _whole_steps(durations, buckets, len(edges), sizes, shares, rng)
    else:
        steps = _global_steps(durations, buckets, len(edges), sizes[0], shares, rng)
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
    batch_size: utterances per batch (per rank and micro-batch), unless batch_frames > 0: then
    each bucket's batch holds floor(batch_frames / its bucket_frames) utterances
    (`batch_sizes_for_frames`) and buckets are filled to whole steps (see `plan_epoch`).
    """

    def __init__(self, durations: Sequence[float], edges: Sequence[float],
                 bucket_frames: Sequence[int], batch_size: int, *, batch_frames: int = 0,
                 seed: int = 0, shuffle: bool = True, sortagrad: bool = False, rank: int = 0,
                 world_size: int = 1, accumulation_steps: int = 1):
        if len(bucket_frames) != len(edges):
            raise SamplerError(f"{len(bucket_frames)} bucket frame lengths for "
                               f"{len(edges)} bucket edges")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.edges = tuple(float(edge) for edge in edges)
        self.bucket_frames = tuple(int(frames) for frames in bucket_frames)
        self.batch_frames = int(batch_frames)
        if self.batch_frames > 0:
            # Buckets that hold no utterance need not fit the budget (max_duration may be generous).
            used = np.unique(assign_buckets(self.durations, self.edges))
            self.batch_size: Union[int, Tuple[int, ...]] = batch_sizes_for_frames(
                self.bucket_frames, self.batch_frames, used)
        else:
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
