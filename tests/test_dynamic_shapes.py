"""`RuntimeConfig.dynamic_shapes`: the training step compiled once for every input shape
(`build_update(..., dynamic_shapes=True)`) trains exactly as one static graph per shape does, and
the trainer builds it from the config key."""
import numpy as np
import pytest

import mindaudio  # noqa: F401
import mindspore as ms
from mindspore import Tensor

from corpus import small_config_dict
from mindaudio.checkpoint import training_parameters
from mindaudio.config import Config, OptimConfig, config_from_dict
from mindaudio.data.features import num_freq_bins
from mindaudio.models.build import build_model
from mindaudio.training.train_step import build_update

# (batch, frames, label length): three shapes, as three length buckets give.
SHAPES = ((2, 40, 4), (3, 24, 3), (1, 56, 6))


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def small_model():
    config = Config()
    config.ModelConfig.hidden_size = 24
    config.ModelConfig.hidden_layers = 2
    return build_model(config, seed=11), config


def batch(config, shape, seed):
    size, frames, label_len = shape
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(size, 1, num_freq_bins(config.SpectConfig), frames)).astype(np.float32)
    # Unequal lengths: the masked model's padding path is part of what must match.
    lengths = np.array([frames - 7 * i for i in range(size)], np.int32)
    features[:, :, :, lengths.min():] *= (np.arange(frames)[lengths.min():] < lengths[:, None])[:, None, None, :]
    labels = rng.integers(0, len(config.labels) - 1, size=(size, label_len)).astype(np.int32)
    return (Tensor(features), Tensor(lengths), Tensor(labels), Tensor(np.full(size, label_len, np.int32)))


def train(dynamic: bool):
    """Two passes over the three shapes, one update per batch; every saved value and the losses."""
    model, config = small_model()
    update = build_update(model, OptimConfig(learning_rate=0.01, weight_decay=0.01), dynamic_shapes=dynamic)
    losses = []
    for repeat in range(2):
        for index, shape in enumerate(SHAPES):
            loss, finite = update.add_micro_batch(*batch(config, shape, seed=10 * repeat + index))
            assert finite
            losses.append(loss)
            update.finish()
    saved = {name: value.asnumpy().copy() for name, value in training_parameters(model, update.optimizer)}
    return saved, losses, update


def test_one_dynamic_graph_trains_every_shape_exactly_as_static_graphs_do():
    static, static_losses, static_update = train(dynamic=False)
    dynamic, dynamic_losses, dynamic_update = train(dynamic=True)
    # The setting is applied: one compiled forward + backward graph instead of one per shape.
    assert len(static_update.accumulate.compile_cache) == len(SHAPES)
    assert len(dynamic_update.accumulate.compile_cache) == 1
    assert dynamic_update.dynamic_shapes and not static_update.dynamic_shapes
    assert dynamic_losses == static_losses
    assert sorted(dynamic) == sorted(static)
    for name in static:
        np.testing.assert_array_equal(dynamic[name], static[name], err_msg=name)


def test_the_config_key_defaults_off_and_parses(tmp_path):
    data = small_config_dict(tmp_path / "m.json", tmp_path / "ckpt")
    assert config_from_dict(data, "test.yaml").runtime.dynamic_shapes is False
    data["RuntimeConfig"] = {"dynamic_shapes": True}
    assert config_from_dict(data, "test.yaml").runtime.dynamic_shapes is True


@pytest.mark.slow
def test_the_trainer_builds_the_dynamic_update_from_the_config(short_manifest, tmp_path):
    from mindaudio.checkpoint import load_checkpoint
    from mindaudio.training.trainer import Trainer

    results, logits = {}, {}
    probe = batch(Config(), (2, 48, 3), seed=7)[:2]
    for dynamic in (False, True):
        config = config_from_dict(small_config_dict(
            short_manifest, tmp_path / f"ckpt-{dynamic}", val_manifest=short_manifest,
            TrainingConfig={"batch_size": 1},
            # The trainer's start-up compiles through the compile cache (`precompile`): with
            # dynamic shapes it lists one training graph.
            RuntimeConfig={"dynamic_shapes": dynamic, "compile_cache_dir": str(tmp_path / f"cache-{dynamic}")}),
            "test.yaml")
        trainer = Trainer(config, progress=False)
        assert trainer.update.dynamic_shapes is dynamic
        result = trainer.run()
        shapes = {(len(b.indices), b.frames) for b in trainer.sampler.batches(0)}
        assert len(shapes) > 1  # the short utterances fall in two buckets
        assert len(trainer.update.accumulate.compile_cache) == (1 if dynamic else len(shapes))
        # Validation (4 utterances in two buckets, batch 4) ran through one eval graph, or one per shape.
        assert len(trainer.model.compile_cache) == (1 if dynamic else 2)
        results[dynamic], _ = load_checkpoint(result.last_checkpoint)
        trainer.model.set_train(False)
        logits[dynamic] = trainer.model(*probe)[0].asnumpy()
    assert set(results[True]) == set(results[False])
    for name in results[False]:
        np.testing.assert_array_equal(results[True][name].asnumpy(), results[False][name].asnumpy(), err_msg=name)
    # Same weights, so the dynamic eval graph must compute what a static one does.
    np.testing.assert_array_equal(logits[True], logits[False])
