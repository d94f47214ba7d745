"""`build_update` on a tiny DeepSpeech2, for both Adam updates (MindSpore's composition and the fused
kernels): the optimizer switch and clip + Adam + weight decay against a numpy Adam, and a skipped
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
from mindaudio.training.fused_adam import FUSED_ENV, kernel_library
from mindaudio.training.train_step import build_update

BATCH, FRAMES, LABEL_LEN = 2, 30, 4


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


@pytest.fixture(params=["composed", "fused"])
def fused(request):
    """Which Adam update `build_update` builds: MindSpore's composition or the fused kernels."""
    if request.param == "fused" and kernel_library() is None:
        pytest.skip("the fused kernels need a C++ compiler")
    return request.param == "fused"


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


def numpy_adam(weights, moments, grads, step, optim, rate=None):
    """MindSpore's Adam as documented, in float64: bias correction folded into the rate (unless
    `rate` is given), epsilon outside the square root. Updates `weights` and `moments` in place."""
    beta1, beta2 = optim.betas
    if rate is None:
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


def run_two_steps(optim, fused):
    model, config = tiny_model()
    update = build_update(model, optim, fused=fused)
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
def test_dividing_twice_is_adam_fed_gradients_divided_by_the_loss_scale(weight_decay, fused):
    # The original's recipe: Adam(loss_scale=1024) on gradients already free of the loss scale;
    # no clipping, so the reference needs none.
    optim = OptimConfig(learning_rate=0.01, weight_decay=weight_decay, loss_scale=1024.0, epsilon=1e-5,
                        max_grad_norm=0.0, divide_by_loss_scale_twice=True)
    got, want = run_two_steps(optim, fused)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)

    plain, plain_want = run_two_steps(dataclasses.replace(optim, divide_by_loss_scale_twice=False), fused)
    for name in plain_want:
        np.testing.assert_allclose(plain[name], plain_want[name], rtol=2e-5, atol=2e-6, err_msg=name)
    # The two recipes differ visibly: epsilon weighs 1024 times more against the divided gradients.
    largest = max(float(np.abs(got[name] - plain[name]).max()) for name in got)
    assert largest > 1e-3, largest


def float32_rate(optim, step):
    """Adam's bias-corrected rate as MindSpore computes it: beta^t multiplied up and 1 - beta^t taken
    in float32 (at t = 1, 1 - 0.999 keeps 4 digits), so a float64 reference can be held tighter."""
    beta1_power = beta2_power = np.float32(1.0)
    for _ in range(step):
        beta1_power = np.float32(beta1_power * np.float32(optim.betas[0]))
        beta2_power = np.float32(beta2_power * np.float32(optim.betas[1]))
    one = np.float32(1.0)
    return float(np.float32(optim.learning_rate) * np.sqrt(one - beta2_power) / (one - beta1_power))


@pytest.mark.parametrize("divide_twice", [False, True])
def test_clipped_accumulated_update_is_numpy_clip_adam_and_weight_decay(divide_twice, fused):
    # Two micro-batches per update, clipping active (the norm is about 20), weight decay on: every
    # step of the update that the fused kernels fold together, against float64 numpy. Betas exact in
    # float32 and the rate as MindSpore rounds it: Adam's float32 1 - beta2 and 1 - beta2^t differ
    # from float64's by 1e-5 relative, which would hide any other difference.
    betas = (float(np.float32(0.9)), float(np.float32(0.999)))
    optim = OptimConfig(learning_rate=0.01, weight_decay=0.05, loss_scale=1024.0, epsilon=1e-5, max_grad_norm=3.0,
                        betas=betas, divide_by_loss_scale_twice=divide_twice)
    model, config = tiny_model()
    update = build_update(model, optim, fused=fused)
    assert update.fused == fused
    params = {p.name: p for p in model.trainable_params()}
    weights = {name: p.asnumpy().astype(np.float64) for name, p in params.items()}
    moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}
    for step in (1, 2, 3):
        update.add_micro_batch(*batch(config, seed=step))
        update.add_micro_batch(*batch(config, seed=10 + step))
        grads = {name: g / 2 for name, g in gradients_of_the_last_micro_batch(update, optim).items()}
        norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        assert norm > optim.max_grad_norm
        clipped = {name: g * optim.max_grad_norm / norm for name, g in grads.items()}
        if divide_twice:
            clipped = {name: g / optim.loss_scale for name, g in clipped.items()}
        decayed = {name: clipped[name] + (optim.weight_decay * weights[name]
                                          if "gamma" not in name and "beta" not in name else 0.0)
                   for name in clipped}
        numpy_adam(weights, moments, decayed, step, optim, rate=float32_rate(optim, step))
        np.testing.assert_allclose(update.finish(), norm, rtol=1e-6)
        for name, param in params.items():
            np.testing.assert_allclose(param.asnumpy(), weights[name], rtol=1e-6, atol=1e-8, err_msg=name)
        for buffer in update.accumulate.accumulators:
            assert not np.any(buffer.asnumpy()), buffer.name
    for name in params:
        m, v = moments[name]
        np.testing.assert_allclose(update.optimizer.moment1[list(params).index(name)].asnumpy(), m,
                                   rtol=1e-5, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(update.optimizer.moment2[list(params).index(name)].asnumpy(), v,
                                   rtol=1e-5, atol=1e-12, err_msg=name)
    assert int(update.optimizer.global_step.asnumpy()[0]) == 3


def test_fused_and_composed_updates_save_the_same_values():
    # One clipped update of two micro-batches: the same gradients in, so only the update's own
    # rounding may differ. (Over more steps the forward passes see weights a rounding apart, and
    # Adam magnifies the gradients' absolute differences by up to rate / epsilon where |g| ~ epsilon.)
    if kernel_library() is None:
        pytest.skip("the fused kernels need a C++ compiler")
    optim = OptimConfig(learning_rate=0.01, weight_decay=0.05, max_grad_norm=3.0)
    saved = []
    for fused in (False, True):
        model, config = tiny_model()
        update = build_update(model, optim, fused=fused)
        update.add_micro_batch(*batch(config, seed=1))
        update.add_micro_batch(*batch(config, seed=2))
        update.finish()
        saved.append(saved_values(model, update))
    composed, fused_values = saved
    assert sorted(composed) == sorted(fused_values)
    for name in composed:
        np.testing.assert_allclose(fused_values[name], composed[name], rtol=1e-6, atol=1e-8, err_msg=name)


def test_the_environment_switch_keeps_the_composed_update(monkeypatch):
    monkeypatch.setenv(FUSED_ENV, "0")
    model, _ = tiny_model()
    assert not build_update(model, OptimConfig()).fused


# ---------------------------------------------------------------- skipped updates


def test_a_poisoned_batch_changes_no_saved_value(fused):
    model, config = tiny_model()
    optim = OptimConfig(learning_rate=0.01)
    update = build_update(model, optim, fused=fused)
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


def test_a_poisoned_micro_batch_discards_the_whole_accumulated_update(fused):
    model, config = tiny_model()
    update = build_update(model, OptimConfig(learning_rate=0.01), fused=fused)
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
    fresh = build_update(fresh_model, OptimConfig(learning_rate=0.01), fused=fused)
    fresh.add_micro_batch(*batch(config, seed=3))
    fresh.finish()
    want, got = saved_values(fresh_model, fresh), saved_values(model, update)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
