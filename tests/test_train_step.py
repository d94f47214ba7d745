"""The device-side update (accumulate, clip, apply, skip) against numpy on a tiny regression net."""
import numpy as np
import pytest

import mindaudio  # noqa: F401
import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn

from mindaudio.training.train_step import (AccumulateGradients, ApplyGradients, ClearGradients,
                                           make_accumulators)


class MeanSquaredError(nn.Cell):
    """loss = mean over the batch of ||W x + b - y||^2 (same call signature as NetWithCTCLoss)."""

    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.dense = nn.Dense(weight.shape[1], weight.shape[0])
        self.dense.weight.set_data(Tensor(weight))
        self.dense.bias.set_data(Tensor(np.zeros(weight.shape[0], np.float32)))

    def construct(self, x, x_lengths, y, y_lengths):
        return ((self.dense(x) - y) ** 2).sum(axis=1).mean()


def numpy_gradient(weight, x, y):
    """d/dW and d/db of mean_b ||W x_b + b - y_b||^2 at b = 0."""
    residual = x @ weight.T - y  # (B, out)
    return 2 * residual.T @ x / len(x), 2 * residual.mean(axis=0)


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def build(weight, lr, loss_scale=1024.0, max_grad_norm=0.0):
    net = MeanSquaredError(weight)
    weights = ParameterTuple(net.trainable_params())
    accumulators = make_accumulators(weights)
    optimizer = nn.SGD(weights, learning_rate=lr)
    return (net, weights, AccumulateGradients(net, weights, accumulators, loss_scale),
            ApplyGradients(optimizer, accumulators, loss_scale, max_grad_norm), ClearGradients(accumulators))


def data(rng, batch):
    x = rng.normal(size=(batch, 3)).astype(np.float32)
    y = rng.normal(size=(batch, 2)).astype(np.float32)
    return x, y


def step_inputs(x, y):
    lengths = Tensor(np.zeros(len(x), np.int32))
    return Tensor(x), lengths, Tensor(y), lengths


def test_one_step_applies_the_exact_gradient_and_reports_its_norm():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(2, 3)).astype(np.float32)
    x, y = data(rng, 4)
    net, weights, accumulate, apply, _ = build(weight, lr=0.1)
    loss, finite = accumulate(*step_inputs(x, y))
    norm = apply(Tensor(1.0, ms.float32))
    grad_w, grad_b = numpy_gradient(weight, x, y)
    assert bool(finite.asnumpy())
    np.testing.assert_allclose(loss.asnumpy(), (((x @ weight.T) - y) ** 2).sum(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(norm.asnumpy(), np.sqrt((grad_w ** 2).sum() + (grad_b ** 2).sum()), rtol=1e-5)
    np.testing.assert_allclose(net.dense.weight.asnumpy(), weight - 0.1 * grad_w, rtol=1e-5, atol=1e-6)


def test_global_norm_clipping_scales_the_update():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(2, 3)).astype(np.float32) * 5
    x, y = data(rng, 4)
    grad_w, grad_b = numpy_gradient(weight, x, y)
    full_norm = np.sqrt((grad_w ** 2).sum() + (grad_b ** 2).sum())
    max_norm = full_norm / 4
    net, _, accumulate, apply, _ = build(weight, lr=0.1, max_grad_norm=float(max_norm))
    accumulate(*step_inputs(x, y))
    norm = apply(Tensor(1.0, ms.float32))
    np.testing.assert_allclose(norm.asnumpy(), full_norm, rtol=1e-5)
    np.testing.assert_allclose(net.dense.weight.asnumpy(), weight - 0.1 * grad_w / 4, rtol=1e-4, atol=1e-5)


def test_accumulating_micro_batches_equals_one_big_batch():
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(2, 3)).astype(np.float32)
    x, y = data(rng, 6)
    big, _, acc_big, apply_big, _ = build(weight, lr=0.05)
    acc_big(*step_inputs(x, y))
    apply_big(Tensor(1.0, ms.float32))
    small, _, acc_small, apply_small, _ = build(weight, lr=0.05)
    for part in range(3):
        acc_small(*step_inputs(x[2 * part:2 * part + 2], y[2 * part:2 * part + 2]))
    apply_small(Tensor(3.0, ms.float32))
    np.testing.assert_allclose(small.dense.weight.asnumpy(), big.dense.weight.asnumpy(), rtol=1e-5, atol=1e-6)


def test_non_finite_micro_batch_adds_nothing_and_clearing_discards_the_update():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(2, 3)).astype(np.float32)
    x, y = data(rng, 4)
    net, weights, accumulate, apply, clear = build(weight, lr=0.1)
    bad = x.copy()
    bad[0, 0] = np.nan
    loss, finite = accumulate(*step_inputs(bad, y))
    assert not bool(finite.asnumpy())
    assert np.isnan(loss.asnumpy())
    for buffer in accumulate.accumulators:
        assert not np.any(buffer.asnumpy()), "a non-finite gradient leaked into the accumulator"
    clear()
    np.testing.assert_array_equal(net.dense.weight.asnumpy(), weight)
    # The next good step is unaffected by the discarded one.
    accumulate(*step_inputs(x, y))
    apply(Tensor(1.0, ms.float32))
    grad_w, _ = numpy_gradient(weight, x, y)
    np.testing.assert_allclose(net.dense.weight.asnumpy(), weight - 0.1 * grad_w, rtol=1e-5, atol=1e-6)


def test_gradient_overflow_from_the_loss_scale_is_reported_not_finite():
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(2, 3)).astype(np.float32) * 10
    x, y = data(rng, 4)
    _, _, accumulate, _, _ = build(weight, lr=0.1, loss_scale=3e38)
    loss, finite = accumulate(*step_inputs(x, y))
    assert np.isfinite(loss.asnumpy())
    assert not bool(finite.asnumpy())
