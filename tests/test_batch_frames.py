"""Batches by frames (`TrainingConfig.batch_frames`) in the configuration and in a real training:
the key's validation, the trainer's batches under the budget, and an exact resume mid-epoch."""
import numpy as np
import pytest

from corpus import small_config_dict
from mindaudio.config import ConfigError, config_from_dict


def test_negative_frame_budget_is_one_error_naming_the_key(tmp_path):
    data = small_config_dict(tmp_path / "m.json", tmp_path / "ckpt", TrainingConfig={"batch_frames": -5})
    with pytest.raises(ConfigError, match=r"^test.yaml: TrainingConfig.batch_frames: must be >= 0"):
        config_from_dict(data, "test.yaml")
    assert config_from_dict(small_config_dict(tmp_path / "m.json", tmp_path / "ckpt"),
                            "test.yaml").TrainingConfig.batch_frames == 0


@pytest.mark.slow
def test_training_by_frames_keeps_the_budget_and_resumes_exactly(short_manifest, tmp_path):
    import mindaudio  # noqa: F401  (before mindspore)
    from mindaudio.checkpoint import CheckpointManager, load_checkpoint
    from mindaudio.data.sampler import SamplerError
    from mindaudio.training.trainer import Trainer

    def config(ckpt, resume_from="", **training):
        return config_from_dict(small_config_dict(
            short_manifest, ckpt, TrainingConfig={"epochs": 2, "batch_size": 1, **training},
            CheckpointConfig={"keep_checkpoint_max": 10, "resume_from": resume_from}), "test.yaml")

    # The short utterances (2.7-5.5 s) fall in the 4 s and 8 s buckets (403 and 803 frames):
    # 1700 frames hold 4 of the first and 2 of the second.
    budget = 1700
    straight = Trainer(config(tmp_path / "straight", batch_frames=budget), progress=False)
    sampler = straight.sampler
    assert sampler.batch_size[:2] == (budget // sampler.bucket_frames[0], budget // sampler.bucket_frames[1])
    for epoch in range(2):
        batches = sampler.batches(epoch)
        assert sorted(i for batch in batches for i in batch.indices) == [0, 1, 2, 3]
        assert all(len(batch.indices) * batch.frames <= budget for batch in batches)
        assert max(len(batch.indices) for batch in batches) > 1  # not the count form's batch 1
    result = straight.run()
    assert result.state.epoch == 2 and result.state.skipped_steps == 0
    numbered = CheckpointManager(str(tmp_path / "straight"), "DeepSpeech", 10).numbered()
    # A checkpoint inside the second epoch: resuming from it must end where the straight run did.
    mid = [path for path in numbered if load_checkpoint(path)[1].epoch == 1
           and load_checkpoint(path)[1].batches_done > 0]
    assert mid, [load_checkpoint(path)[1] for path in numbered]
    resumed = Trainer(config(tmp_path / "resumed", resume_from=mid[0], batch_frames=budget),
                      progress=False)
    assert (resumed.state.epoch, resumed.state.batches_done) == (1, load_checkpoint(mid[0])[1].batches_done)
    again = resumed.run()
    want, _ = load_checkpoint(result.last_checkpoint)
    got, _ = load_checkpoint(again.last_checkpoint)
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_array_equal(got[name].asnumpy(), want[name].asnumpy(), err_msg=name)

    # A budget below the longest used bucket's padding is one error naming the key.
    with pytest.raises(SamplerError, match="TrainingConfig.batch_frames 500 cannot hold one utterance"):
        Trainer(config(tmp_path / "small", batch_frames=500), progress=False)
