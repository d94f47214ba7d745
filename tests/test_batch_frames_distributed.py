"""Batches by frames under data parallelism: 2 ranks (msrun) end where one process accumulating 2
micro-batches per step ends, as with batches by count (tests/test_distributed.py, whose corpus and
helpers this reuses)."""
import sys

import pytest

from test_distributed import (WORLD, assert_same_weights, corpus, final_checkpoint,  # noqa: F401 (fixture)
                              msrun_command, run, trainable, write_config)


@pytest.mark.slow
def test_msrun_two_ranks_by_frames_equal_one_process_accumulating(corpus, tmp_path, repo_root):  # noqa: F811
    # Four utterances in each bucket (4 s: 403 frames, 6 s: 603): 806 frames hold 2 and 1 per
    # batch, so an epoch is one step of 2 x 2 short utterances and two of 2 x 1 long ones.
    frames = {"batch_frames": 806, "bucket_boundaries": [4.0, 6.0]}
    single = write_config(tmp_path / "single", corpus, accumulation=WORLD, **frames)
    proc = run([sys.executable, "train.py", "-c", str(single)], repo_root)
    assert "utterances per batch by bucket (4 s: 2, 6 s: 1); 6 batches per epoch" in proc.stdout, proc.stdout
    ranks = write_config(tmp_path / "ranks", corpus, accumulation=1, **frames)
    run(msrun_command(tmp_path / "msrun_log", "train.py", "-c", str(ranks)), repo_root)
    want, want_state = final_checkpoint(single)
    got, got_state = final_checkpoint(ranks)
    assert got_state.global_step == want_state.global_step > 0
    assert_same_weights(trainable(got), trainable(want))
