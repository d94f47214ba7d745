"""`build_update` on a tiny DeepSpeech2: the optimizer switch against a numpy Adam, and a skipped
update that leaves every value (weights, BatchNorm statistics, Adam's state) as it was."""
import dataclasses

import numpy as np
import pytest

import mindaudio  # noqa: F401
import mindspore as ms
from mindspore import Tensor

from mindaudio.checkpoint import training_parameters
from mindaudio.config import Config, OptimConfig
from mindaudio.data.features import num_freq_bins
from mindaudio.models.build import build_model
from mindaudio.training.train_step import build_update

BATCH, FRAMES, LABEL_LEN = 2, 30, 4


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def tiny_model(seed=5):
    config = Config()
    config.ModelConfig.hidden_size = 16
    config.ModelConfig.hidden_layers = 1
    return build_model(config, seed=seed), config


def batch(config, seed, poison=False):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(BATCH, 1, num_freq_bins(config.SpectConfig), FRAMES)).astype(np.float32)
    if poison:
        # What the dataset hands over for an utterance whose audio holds NaN samples.
        features[1] = np.nan
    labels = rng.integers(0, len(config.labels) - 1, size=(BATCH, LABEL_LEN)).astype(np.int32)
    return (Tensor(features), Tensor(np.full(BATCH, FRAMES, np.int32)), Tensor(labels),
            Tensor(np.full(BATCH, LABEL_LEN, np.int32)))


def saved_values(model, update):
    """Every value a checkpoint of this run would hold, by name."""
    return {name: value.asnumpy().copy() for name, value in training_parameters(model, update.optimizer)}


# ---------------------------------------------------------------- the optimizer switch


def numpy_adam(weights, moments, grads, step, optim):
    """MindSpore's Adam as documented, in float64: bias correction folded into the rate,
    epsilon outside the square root. Updates `weights` and `moments` in place."""
    beta1, beta2 = optim.betas
    rate = optim.learning_rate * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    for name, grad in grads.items():
        m, v = moments[name]
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        moments[name] = (m, v)
        weights[name] = weights[name] - rate * m / (np.sqrt(v) + optim.epsilon)


def gradients_of_the_last_micro_batch(update, optim):
    """The accumulation buffers hold the loss-scaled gradient of the one micro-batch added."""
    return {p.name[len("accum."):]: p.asnumpy().astype(np.float64) / optim.loss_scale
            for p in update.accumulate.accumulators}


def run_two_steps(optim):
    model, config = tiny_model()
    update = build_update(model, optim)
    params = {p.name: p for p in model.trainable_params()}
    weights = {name: p.asnumpy().astype(np.float64) for name, p in params.items()}
    moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}
    for step in (1, 2):
        update.add_micro_batch(*batch(config, seed=step))
        grads = gradients_of_the_last_micro_batch(update, optim)
        if optim.divide_by_loss_scale_twice:
            grads = {name: g / optim.loss_scale for name, g in grads.items()}
        # Plain Adam fed those gradients: weight decay added to them (MindSpore's default filter
        # spares BatchNorm's gamma and beta).
        decayed = {name: grads[name] + (optim.weight_decay * weights[name]
                                        if "gamma" not in name and "beta" not in name else 0.0)
                   for name in grads}
        numpy_adam(weights, moments, decayed, step, optim)
        assert update.finish() is not None
    return {name: p.asnumpy() for name, p in params.items()}, weights


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_dividing_twice_is_adam_fed_gradients_divided_by_the_loss_scale(weight_decay):
    # The original's recipe: Adam(loss_scale=1024) on gradients already free of the loss scale;
    # no clipping, so the reference needs none.
    optim = OptimConfig(learning_rate=0.01, weight_decay=weight_decay, loss_scale=1024.0, epsilon=1e-5,
                        max_grad_norm=0.0, divide_by_loss_scale_twice=True)
    got, want = run_two_steps(optim)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)

    plain, plain_want = run_two_steps(dataclasses.replace(optim, divide_by_loss_scale_twice=False))
    for name in plain_want:
        np.testing.assert_allclose(plain[name], plain_want[name], rtol=2e-5, atol=2e-6, err_msg=name)
    # The two recipes differ visibly: epsilon weighs 1024 times more against the divided gradients.
    largest = max(float(np.abs(got[name] - plain[name]).max()) for name in got)
    assert largest > 1e-3, largest


# ---------------------------------------------------------------- skipped updates


def test_a_poisoned_batch_changes_no_saved_value():
    model, config = tiny_model()
    optim = OptimConfig(learning_rate=0.01)
    update = build_update(model, optim)
    update.add_micro_batch(*batch(config, seed=1))
    assert update.finish() is not None  # Adam's moments and BatchNorm's statistics are now non-trivial
    before = saved_values(model, update)
    assert any("moving_mean" in name for name in before)
    assert np.abs(before["moment1.fc.module.weight"]).max() > 0

    loss, finite = update.add_micro_batch(*batch(config, seed=2, poison=True))
    assert not finite and not np.isfinite(loss)
    assert update.finish() is None
    after = saved_values(model, update)
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    for buffer in update.accumulate.accumulators:
        assert not np.any(buffer.asnumpy()), buffer.name


def test_a_poisoned_micro_batch_discards_the_whole_accumulated_update():
    model, config = tiny_model()
    update = build_update(model, OptimConfig(learning_rate=0.01))
    before = saved_values(model, update)
    # A clean micro-batch moves BatchNorm's statistics; the poisoned one after it voids the update.
    _, finite = update.add_micro_batch(*batch(config, seed=3))
    assert finite
    moved = saved_values(model, update)
    assert any(not np.array_equal(moved[n], before[n]) for n in before if "moving_" in n)
    _, finite = update.add_micro_batch(*batch(config, seed=4, poison=True))
    assert not finite
    assert update.finish() is None
    after = saved_values(model, update)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    # The next clean update is the one a run without the poisoned batch would make.
    update.add_micro_batch(*batch(config, seed=3))
    update.finish()
    fresh_model, _ = tiny_model()
    fresh = build_update(fresh_model, OptimConfig(learning_rate=0.01))
    fresh.add_micro_batch(*batch(config, seed=3))
    fresh.finish()
    want, got = saved_values(fresh_model, fresh), saved_values(model, update)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
