"""Bucketed batch plans: coverage, padding bounds, ordering, determinism, rank shards, drops."""
import collections
import itertools

import numpy as np
import pytest

from mindaudio.data.sampler import (Batch, BucketSampler, DropCounts, SamplerError,
                                    assign_buckets, batch_sizes_for_frames, bucket_edges,
                                    ctc_min_frames, filter_utterances, plan_epoch)

EDGES = (2.0, 4.0, 6.0, 10.0)


def realistic_durations(count, seed=7):
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(0.5, 10.0, size=count), 3)


def all_rank_plans(durations, batch_size, world_size, **kwargs):
    return [plan_epoch(durations, EDGES, batch_size, rank=rank, world_size=world_size, **kwargs)
            for rank in range(world_size)]


def flat_indices(plans):
    return [index for plan in plans for indices, _ in plan for index in indices]


# ---------------------------------------------------------------- filtering


def test_ctc_min_frames_counts_one_blank_per_adjacent_repeat():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([3]) == 1
    assert ctc_min_frames([1, 2, 3]) == 3
    # "LL" in HELLO needs a blank between the two L's.
    assert ctc_min_frames([7, 4, 11, 11, 14]) == 6
    assert ctc_min_frames([5, 5, 5]) == 5


def test_filter_counts_each_reason_exactly():
    # One output frame per 0.1 s, so a duration of d seconds admits 10*d CTC frames.
    def frames_of(duration):
        return int(duration * 10)

    durations = [1.0, 3.5, 2.0, 0.5, 0.3, 1.0, 4.0, 0.4]
    labels = [
        [1, 2, 3],                    # kept: 3 <= 10
        [1, 2],                       # too long (3.5 > 3.0)
        [],                           # empty label
        [1, 2, 3, 4, 5],              # exactly fits 5 frames: kept
        [1, 1, 2],                    # needs 4 frames (one repeat), has 3: label too long
        [4] * 6,                      # needs 11 frames, has 10: label too long
        [],                           # too long wins over empty (checked first)
        [1, 2, 2, 3],                 # needs 5, has 4: label too long
    ]
    kept, drops = filter_utterances(durations, labels, max_duration=3.0,
                                    output_frames_of_duration=frames_of)
    assert kept.tolist() == [0, 3]
    assert drops == DropCounts(too_long=2, empty_label=1, label_too_long=3)
    assert drops.total == 6


def test_filter_without_limits_keeps_everything():
    kept, drops = filter_utterances([50.0, 0.1], [[], [1] * 40])
    assert kept.tolist() == [0, 1]
    assert drops.total == 0


def test_filter_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 durations but 1 labels"):
        filter_utterances([1.0, 2.0], [[1]])


# ---------------------------------------------------------------- buckets


def test_bucket_edges_close_with_max_duration():
    assert bucket_edges([4.0, 2.0, 12.0, 20.0], 15.0) == (2.0, 4.0, 12.0, 15.0)
    assert bucket_edges([], 5.0) == (5.0,)
    with pytest.raises(SamplerError):
        bucket_edges([0.0, 1.0], 5.0)


def test_assign_buckets_uses_inclusive_upper_edges():
    buckets = assign_buckets([0.1, 2.0, 2.0001, 6.0, 9.99, 10.0], EDGES)
    assert buckets.tolist() == [0, 0, 1, 2, 3, 3]
    with pytest.raises(SamplerError, match="beyond the last bucket edge"):
        assign_buckets([10.5], EDGES)


# ---------------------------------------------------------------- coverage and padding


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("count,batch_size", [(103, 8), (50, 4), (17, 5), (9, 1), (40, 3)])
def test_each_utterance_once_per_epoch_over_all_ranks(world_size, count, batch_size):
    durations = realistic_durations(count)
    for epoch, shuffle, sortagrad in [(0, True, True), (1, True, True), (0, True, False),
                                      (0, False, False)]:
        plans = all_rank_plans(durations, batch_size, world_size, epoch=epoch, seed=3,
                               shuffle=shuffle, sortagrad=sortagrad)
        assert sorted(flat_indices(plans)) == list(range(count))
        assert len({len(plan) for plan in plans}) == 1, "ranks must take the same number of steps"
        for plan in plans:
            assert all(len(indices) >= 1 for indices, _ in plan)
            limit = batch_size if batch_size > 1 or world_size == 1 else 2
            assert all(len(indices) <= limit for indices, _ in plan)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_share_the_bucket_of_each_step(world_size):
    durations = realistic_durations(77)
    plans = all_rank_plans(durations, 6, world_size, epoch=2, seed=1)
    for step in zip(*plans):
        assert len({bucket for _, bucket in step}) == 1


def test_single_rank_padding_is_bounded_by_bucket_width():
    durations = realistic_durations(200)
    lower_edges = (0.0,) + EDGES[:-1]
    for epoch in range(3):
        for indices, bucket in plan_epoch(durations, EDGES, 7, epoch=epoch, seed=5,
                                          sortagrad=True):
            for index in indices:
                assert lower_edges[bucket] < durations[index] <= EDGES[bucket]


@pytest.mark.parametrize("world_size", [2, 3])
def test_multi_rank_batches_always_fit_their_bucket(world_size):
    durations = realistic_durations(61, seed=11)
    lower_edges = (0.0,) + EDGES[:-1]
    natural = assign_buckets(durations, EDGES)
    moved = 0
    for rank in range(world_size):
        for indices, bucket in plan_epoch(durations, EDGES, 4, epoch=1, seed=2, rank=rank,
                                          world_size=world_size):
            for index in indices:
                assert durations[index] <= EDGES[bucket]
                if durations[index] <= lower_edges[bucket]:
                    moved += 1
                    assert natural[index] < bucket
    # Only remainders smaller than world_size per bucket may move up a bucket.
    assert moved < world_size * len(EDGES)


def test_remainder_smaller_than_world_moves_up_one_bucket():
    # Bucket 0 holds 5 utterances, bucket 1 holds 4: with 2 ranks and batch size 2, bucket 0
    # leaves one utterance over, which must join bucket 1 rather than be lost or repeated.
    durations = [0.5, 0.6, 0.7, 0.8, 1.9, 3.0, 3.1, 3.2, 3.3]
    plans = all_rank_plans(durations, 2, 2, shuffle=False)
    assert sorted(flat_indices(plans)) == list(range(9))
    where = {index: bucket for plan in plans for indices, bucket in plan for index in indices}
    assert where[4] == 1  # the longest of bucket 0 moved up
    assert all(where[index] == 0 for index in range(4))


def test_leftover_after_last_bucket_joins_the_last_step():
    # 7 utterances all in one bucket, batch 3, 3 ranks: 9 per step, so one step of 7.
    durations = [1.0 + 0.1 * i for i in range(7)]
    plans = all_rank_plans(durations, 3, 3, epoch=0, shuffle=False)
    assert [len(plan) for plan in plans] == [1, 1, 1]
    assert sorted(len(plan[0][0]) for plan in plans) == [2, 2, 3]
    # 10 utterances, batch 3, 3 ranks: one full step of 9 plus 1 left over, which cannot be
    # shared by 3 ranks: it merges with the full step into two steps of 5.
    durations = [1.0 + 0.1 * i for i in range(10)]
    plans = all_rank_plans(durations, 3, 3, epoch=0, shuffle=False)
    assert sorted(flat_indices(plans)) == list(range(10))
    assert [len(plan) for plan in plans] == [2, 2, 2]


def test_fewer_utterances_than_ranks_is_an_error():
    with pytest.raises(SamplerError, match="2 utterances cannot be shared by 3 ranks"):
        plan_epoch([1.0, 2.0], EDGES, 4, rank=0, world_size=3)
    with pytest.raises(SamplerError, match="rank 3"):
        plan_epoch([1.0, 2.0], EDGES, 4, rank=3, world_size=3)


# ---------------------------------------------------------------- ordering and determinism


def test_sortagrad_first_epoch_goes_shortest_first():
    durations = realistic_durations(90)
    plan = plan_epoch(durations, EDGES, 8, epoch=0, seed=4, sortagrad=True)
    flat = [durations[index] for indices, _ in plan for index in indices]
    assert flat == sorted(flat)
    assert [bucket for _, bucket in plan] == sorted(bucket for _, bucket in plan)
    # Later epochs are shuffled.
    later = plan_epoch(durations, EDGES, 8, epoch=1, seed=4, sortagrad=True)
    later_flat = [durations[index] for indices, _ in later for index in indices]
    assert later_flat != sorted(later_flat)


def test_without_sortagrad_the_first_epoch_is_shuffled():
    durations = realistic_durations(90)
    plan = plan_epoch(durations, EDGES, 8, epoch=0, seed=4, sortagrad=False)
    buckets = [bucket for _, bucket in plan]
    assert buckets != sorted(buckets)


def test_epochs_differ_and_seeds_reproduce():
    durations = realistic_durations(120)
    epoch1 = plan_epoch(durations, EDGES, 8, epoch=1, seed=9)
    epoch2 = plan_epoch(durations, EDGES, 8, epoch=2, seed=9)
    assert epoch1 != epoch2
    assert [set(ix) for ix, _ in epoch1] != [set(ix) for ix, _ in epoch2]
    assert plan_epoch(durations, EDGES, 8, epoch=1, seed=9) == epoch1
    assert plan_epoch(durations, EDGES, 8, epoch=1, seed=10) != epoch1
    # (seed, epoch) pairs do not alias each other as seed + epoch would.
    assert plan_epoch(durations, EDGES, 8, epoch=0, seed=10) != epoch1


def test_plan_does_not_touch_global_random_state():
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    plan_epoch(realistic_durations(30), EDGES, 4, epoch=3, seed=1)
    assert np.random.random() == expected


def test_batches_within_a_bucket_are_mixed_between_epochs():
    # All in one bucket: only the within-bucket shuffle can change who shares a batch.
    durations = np.linspace(0.5, 1.9, 40)
    first = {frozenset(ix) for ix, _ in plan_epoch(durations, EDGES, 5, epoch=1, seed=0)}
    second = {frozenset(ix) for ix, _ in plan_epoch(durations, EDGES, 5, epoch=2, seed=0)}
    assert first != second


def test_evaluation_is_sorted_complete_and_keeps_partial_batches():
    durations = realistic_durations(45)
    plan = plan_epoch(durations, EDGES, 8, epoch=5, seed=1, shuffle=False)
    assert plan == plan_epoch(durations, EDGES, 8, epoch=0, seed=99, shuffle=False)
    flat = [index for indices, _ in plan for index in indices]
    assert sorted(flat) == list(range(45))
    assert [durations[i] for i in flat] == sorted(durations)
    per_bucket = collections.Counter(assign_buckets(durations, EDGES).tolist())
    sizes = collections.defaultdict(list)
    for indices, bucket in plan:
        sizes[bucket].append(len(indices))
    for bucket, count in per_bucket.items():
        expected = [8] * (count // 8) + ([count % 8] if count % 8 else [])
        assert sizes[bucket] == expected


# ---------------------------------------------------------------- the sampler class


def test_bucket_sampler_resumes_mid_epoch_and_carries_frames():
    durations = realistic_durations(70)
    frames = (201, 401, 601, 1001)
    sampler = BucketSampler(durations, EDGES, frames, 6, seed=2, sortagrad=True, rank=1,
                            world_size=2)
    whole = sampler.batches(3)
    assert len(whole) == len(sampler)
    assert sampler.batches(3, start=4) == whole[4:]
    assert all(isinstance(batch, Batch) for batch in whole)
    assert all(batch.frames == frames[batch.bucket] for batch in whole)
    assert len(sampler.batches(0)) == len(sampler.batches(7)) == len(sampler)


def test_bucket_sampler_rejects_mismatched_frames():
    with pytest.raises(SamplerError, match="3 bucket frame lengths for 4 bucket edges"):
        BucketSampler([1.0], EDGES, (1, 2, 3), 4)


def test_step_count_is_the_same_every_epoch_and_rank():
    durations = realistic_durations(83, seed=3)
    for world_size, batch_size in itertools.product([1, 2, 3], [1, 4, 9]):
        counts = {len(plan_epoch(durations, EDGES, batch_size, epoch=epoch, seed=0, rank=rank,
                                 world_size=world_size))
                  for epoch in range(3) for rank in range(world_size)}
        assert len(counts) == 1


def test_drops_for_digits_count_in_the_total():
    from mindaudio.data.sampler import DropCounts
    counts = DropCounts(too_long=1, empty_label=2, label_too_long=3, digits=4, empty_audio=5)
    assert counts.total == 15
    assert DropCounts(1, 2, 3).digits == 0


# ---------------------------------------------------------------- batches by frames

FRAMES = (201, 401, 601, 1001)  # padded frames of EDGES' buckets (10 ms hop, 2 s -> 201)


def test_batch_sizes_for_frames_divide_the_budget():
    assert batch_sizes_for_frames(FRAMES, 2004) == (9, 4, 3, 2)
    assert batch_sizes_for_frames(FRAMES, 1001) == (4, 2, 1, 1)
    # A bucket no utterance uses need not fit: it gets 1.
    assert batch_sizes_for_frames(FRAMES, 700, used_buckets=[0, 2]) == (3, 1, 1, 1)
    with pytest.raises(SamplerError, match=r"TrainingConfig.batch_frames 700 cannot hold one "
                                           r"utterance of bucket 3, which pads to 1001 frames"):
        batch_sizes_for_frames(FRAMES, 700)
    # The error names the smallest budget that works: the longest used bucket's padding.
    with pytest.raises(SamplerError, match="300 cannot hold one utterance of bucket 3, which pads to "
                                           "1001 frames: use at least 1001"):
        batch_sizes_for_frames(FRAMES, 300)


def shapes_of(plan):
    return collections.Counter((len(indices), bucket) for indices, bucket in plan)


def test_frame_budget_sizes_each_bucket_and_fills_whole_steps():
    durations = realistic_durations(300, seed=5)
    sampler = BucketSampler(durations, EDGES, FRAMES, 64, batch_frames=2004, seed=3, sortagrad=True)
    assert sampler.batch_size == (9, 4, 3, 2)
    for epoch in range(3):
        plan = sampler.batches(epoch)
        assert sorted(i for batch in plan for i in batch.indices) == list(range(300))
        for batch in plan:
            assert len(batch.indices) * batch.frames <= 2004
            assert all(durations[i] <= EDGES[batch.bucket] for i in batch.indices)
        sizes = collections.defaultdict(set)
        for batch in plan:
            sizes[batch.bucket].add(len(batch.indices))
        lowest = min(sizes)
        # Every bucket is one shape, full batches; only the lowest may end with a smaller one.
        for bucket, seen in sizes.items():
            if bucket == lowest:
                assert max(seen) == sampler.batch_size[bucket] and len(seen) <= 2
            else:
                assert seen == {sampler.batch_size[bucket]}


def test_frame_budget_moves_only_the_longest_of_the_buckets_below():
    # Bucket counts 4 (<=2 s), 3 (<=4 s), 3 (<=6 s) with batch sizes 2, 2, 2: bucket 2 needs one
    # more utterance to fill its second step and takes the longest of bucket 1; bucket 1 is then
    # left with 2 (one step); bucket 0 keeps its 4 (two steps). Nothing moves down.
    durations = [0.5, 1.0, 1.5, 1.9, 2.5, 3.0, 3.9, 4.5, 5.0, 5.5]
    plan = plan_epoch(durations, EDGES, (2, 2, 2, 2), shuffle=False)
    assert plan == [((0, 1), 0), ((2, 3), 0), ((4, 5), 1), ((6, 7), 2), ((8, 9), 2)]
    # Capacities 3, 2, 2: bucket 2 takes 3.9 s as above; bucket 1 (2 left) is whole; bucket 0's
    # 4 make one full step of 3 and a last one of 1 (the shortest bucket may end short).
    plan = plan_epoch(durations, EDGES, (3, 2, 2, 2), shuffle=False)
    assert plan == [((0, 1, 2), 0), ((3,), 0), ((4, 5), 1), ((6, 7), 2), ((8, 9), 2)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("count,budget", [(103, 2004), (40, 1202), (17, 1001), (9, 1001)])
def test_frame_budget_covers_each_utterance_once_over_all_ranks(world_size, count, budget):
    durations = realistic_durations(count)
    sizes = batch_sizes_for_frames(FRAMES, budget)
    for epoch, shuffle, sortagrad in [(0, True, True), (1, True, True), (2, True, False),
                                      (0, False, False)]:
        plans = all_rank_plans(durations, sizes, world_size, epoch=epoch, seed=3,
                               shuffle=shuffle, sortagrad=sortagrad)
        assert sorted(flat_indices(plans)) == list(range(count))
        assert len({len(plan) for plan in plans}) == 1, "ranks must take the same number of steps"
        for step in zip(*plans):
            assert len({bucket for _, bucket in step}) == 1
        for plan in plans:
            for indices, bucket in plan:
                assert 1 <= len(indices)
                assert all(durations[i] <= EDGES[bucket] for i in indices)
                limit = sizes[bucket] if sizes[bucket] > 1 or world_size == 1 else 2
                assert len(indices) <= limit


def test_frame_budget_plan_is_a_function_of_seed_and_epoch():
    durations = realistic_durations(150)
    sizes = batch_sizes_for_frames(FRAMES, 2004)
    first = plan_epoch(durations, EDGES, sizes, epoch=1, seed=9)
    assert plan_epoch(durations, EDGES, sizes, epoch=1, seed=9) == first
    assert plan_epoch(durations, EDGES, sizes, epoch=2, seed=9) != first
    assert plan_epoch(durations, EDGES, sizes, epoch=1, seed=10) != first
    # Who shares a batch changes between epochs; the shapes (and their counts) never do.
    second = plan_epoch(durations, EDGES, sizes, epoch=2, seed=9)
    assert {frozenset(ix) for ix, _ in first} != {frozenset(ix) for ix, _ in second}
    assert shapes_of(first) == shapes_of(second) == shapes_of(
        plan_epoch(durations, EDGES, sizes, epoch=0, seed=9, sortagrad=True))
    sampler = BucketSampler(durations, EDGES, FRAMES, 8, batch_frames=2004, seed=9, rank=1,
                            world_size=2)
    whole = sampler.batches(4)
    assert sampler.batches(4, start=5) == whole[5:]
    assert len(sampler.batches(0)) == len(whole) == len(sampler)


def test_frame_budget_sortagrad_goes_shortest_first():
    durations = realistic_durations(120)
    sizes = batch_sizes_for_frames(FRAMES, 2004)
    plan = plan_epoch(durations, EDGES, sizes, epoch=0, seed=4, sortagrad=True)
    flat = [durations[index] for indices, _ in plan for index in indices]
    assert flat == sorted(flat)
    later = plan_epoch(durations, EDGES, sizes, epoch=1, seed=4, sortagrad=True)
    assert [durations[i] for ix, _ in later for i in ix] != sorted(flat)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("epoch,sortagrad", [(0, True), (1, True), (2, False)])
def test_frame_budget_ranks_see_what_one_process_accumulates(ranks, epoch, sortagrad):
    durations = realistic_durations(97, seed=2)
    sizes = batch_sizes_for_frames(FRAMES, 1202)
    single = plan_epoch(durations, EDGES, sizes, epoch=epoch, seed=4, sortagrad=sortagrad,
                        accumulation_steps=ranks)
    shards = [plan_epoch(durations, EDGES, sizes, epoch=epoch, seed=4, sortagrad=sortagrad,
                         rank=rank, world_size=ranks) for rank in range(ranks)]
    for step, micro_batches in enumerate(zip(*[iter(single)] * ranks)):
        assert list(micro_batches) == [shard[step] for shard in shards]


def test_frame_budget_has_fewer_shapes_than_count_batching():
    durations = realistic_durations(500, seed=8)
    by_count = plan_epoch(durations, EDGES, 5, epoch=1, seed=1)
    by_frames = plan_epoch(durations, EDGES, batch_sizes_for_frames(FRAMES, 2004), epoch=1, seed=1)
    used = len(set(assign_buckets(durations, EDGES).tolist()))
    assert len(shapes_of(by_frames)) <= used + 1 < len(shapes_of(by_count))


def test_per_bucket_sizes_must_match_the_edges():
    with pytest.raises(SamplerError, match="3 batch sizes for 4 bucket edges"):
        plan_epoch([1.0], EDGES, (1, 2, 3))
