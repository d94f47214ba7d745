"""CTC loss on the device against the numpy reference in ctc_reference.py (itself checked first)."""
import numpy as np
import pytest

import mindaudio  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms
from mindspore import nn

from mindaudio.config import SpectConfig
from mindaudio.models.deepspeech2 import DeepSpeechModel
from mindaudio.models.loss import CTCLoss, NetWithCTCLoss
import ctc_reference as ref


# --- the reference itself ---------------------------------------------------------------------

@pytest.mark.parametrize("target", [[0, 1], [1, 1], [1, 0, 1], [], [1]])
def test_reference_forward_backward_equals_brute_force(target):
    rng = np.random.default_rng(len(target))
    logits = rng.standard_normal((5, 3))
    blank = 2
    assert ref.ctc_loss(logits, target, blank) == pytest.approx(
        ref.brute_force_loss(logits, target, blank), rel=1e-10)


def test_reference_blank_not_last_equals_brute_force():
    logits = np.random.default_rng(3).standard_normal((4, 3))
    assert ref.ctc_loss(logits, [2, 2], 0) == pytest.approx(
        ref.brute_force_loss(logits, [2, 2], 0), rel=1e-10)


def test_reference_infeasible_target_has_infinite_loss():
    logits = np.random.default_rng(0).standard_normal((2, 3))
    # [1, 1] needs a blank between the repeats: 3 frames.
    assert ref.ctc_loss(logits, [1, 1], 2) == np.inf
    assert ref.brute_force_loss(logits, [1, 1], 2) == np.inf


def test_reference_alpha_beta_give_the_same_probability_at_every_frame():
    logits = np.random.default_rng(1).standard_normal((7, 4))
    log_probs = ref.log_softmax(logits)
    log_alpha, log_beta = ref.forward_backward(log_probs, [0, 0, 2], blank=3)
    per_frame = np.logaddexp.reduce(log_alpha + log_beta, axis=1)
    np.testing.assert_allclose(per_frame, per_frame[0], rtol=1e-12)
    assert -per_frame[0] == pytest.approx(ref.ctc_loss(logits, [0, 0, 2], 3), rel=1e-12)


@pytest.mark.parametrize("target", [[0, 0], [0, 1, 0], [1]])
def test_reference_gradient_equals_central_finite_differences(target):
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((6, 3))
    blank = 2
    _, grad = ref.ctc_loss_and_grad(logits, target, blank)
    step = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(*logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (ref.ctc_loss(up, target, blank) - ref.ctc_loss(down, target, blank)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


# --- the device loss ----------------------------------------------------------------------------

def _batch():
    """Three utterances of different lengths, repeated characters, padding with garbage logits."""
    rng = np.random.default_rng(42)
    num_frames, batch, num_classes = 14, 3, 6
    logits = rng.standard_normal((num_frames, batch, num_classes)).astype(np.float32) * 2
    logit_lengths = np.array([14, 9, 5], np.int32)
    labels = np.array([[0, 1, 1, 2, 2, 3],    # repeats: needs 8 frames
                       [4, 4, 4, -1, -1, -1], # triple repeat, padded with -1
                       [2, 3, 5, 5, 5, 5]],   # padded with the blank
                      np.int32)
    label_lengths = np.array([6, 3, 2], np.int32)
    return logits, logit_lengths, labels, label_lengths


class _MeanCTC(nn.Cell):
    def __init__(self, blank):
        super().__init__()
        self.ctc = CTCLoss(blank)

    def construct(self, logits, logit_lengths, labels, label_lengths):
        return self.ctc(logits, logit_lengths, labels, label_lengths).mean()


def _device_loss_and_grad(blank, logits, logit_lengths, labels, label_lengths):
    inputs = [ms.Tensor(a) for a in (logits, logit_lengths, labels, label_lengths)]
    losses = CTCLoss(blank)(*inputs).asnumpy()
    grad = ms.grad(_MeanCTC(blank), grad_position=0)(*inputs).asnumpy()
    return losses, grad


def test_loss_and_gradient_match_reference_blank_last(execution_mode):
    logits, logit_lengths, labels, label_lengths = _batch()
    losses, grad = _device_loss_and_grad(-1, logits, logit_lengths, labels, label_lengths)
    ref_losses, ref_grad = ref.batch_loss_and_grad(logits, logit_lengths, labels, label_lengths,
                                                   blank=5)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=2e-6)
    # Padded frames carry no gradient.
    assert np.all(grad[9:, 1] == 0) and np.all(grad[5:, 2] == 0)


def test_explicit_blank_index_matches_reference():
    logits, logit_lengths, labels, label_lengths = _batch()
    labels = np.where(labels == 0, 5, labels)  # class 0 becomes the blank; 5 is a label now
    losses, grad = _device_loss_and_grad(0, logits, logit_lengths, labels, label_lengths)
    ref_losses, ref_grad = ref.batch_loss_and_grad(logits, logit_lengths, labels, label_lengths,
                                                   blank=0)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=2e-6)


def test_blank_minus_one_differs_from_blank_zero():
    # Guards against the blank argument being ignored.
    logits, logit_lengths, labels, label_lengths = _batch()
    labels = np.minimum(labels, 4)
    inputs = [ms.Tensor(a) for a in (logits, logit_lengths, labels, label_lengths)]
    last = CTCLoss(-1)(*inputs).asnumpy()
    np.testing.assert_allclose(
        last, ref.batch_loss_and_grad(logits, logit_lengths, labels, label_lengths, 5)[0], rtol=1e-5)
    with_zero = ref.batch_loss_and_grad(logits, logit_lengths, np.maximum(labels, 1),
                                        label_lengths, 0)[0]
    inputs[2] = ms.Tensor(np.maximum(labels, 1))
    np.testing.assert_allclose(CTCLoss(0)(*inputs).asnumpy(), with_zero, rtol=1e-5)


def test_infeasible_utterances_give_zero_loss_and_gradient(execution_mode):
    logits, logit_lengths, labels, label_lengths = _batch()
    logit_lengths = logit_lengths.copy()
    logit_lengths[0] = 7   # label needs 8 frames (6 labels + 2 repeats): impossible by repeats
    logit_lengths[2] = 1   # label longer than the frames: the raw kernel would fail
    losses, grad = _device_loss_and_grad(-1, logits, logit_lengths, labels, label_lengths)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(grad))
    assert losses[0] == 0 and losses[2] == 0
    assert np.all(grad[:, 0] == 0) and np.all(grad[:, 2] == 0)
    ref_losses, ref_grad = ref.batch_loss_and_grad(logits[:, 1:2], logit_lengths[1:2], labels[1:2],
                                                   label_lengths[1:2], blank=5)
    assert losses[1] == pytest.approx(ref_losses[0], rel=1e-5)
    # The batch mean still divides by all three utterances.
    np.testing.assert_allclose(grad[:, 1:2], ref_grad / 3, atol=2e-6)


def test_exactly_feasible_repeat_is_kept():
    # [1, 1] in exactly 3 frames is possible (1, blank, 1): it must not be zeroed.
    logits = np.random.default_rng(5).standard_normal((3, 1, 3)).astype(np.float32)
    inputs = [ms.Tensor(logits), ms.Tensor(np.array([3], np.int32)),
              ms.Tensor(np.array([[1, 1]], np.int32)), ms.Tensor(np.array([2], np.int32))]
    loss = CTCLoss(-1)(*inputs).asnumpy()[0]
    assert loss == pytest.approx(ref.brute_force_loss(logits[:, 0], [1, 1], 2), rel=1e-5)


def test_net_with_loss_is_batch_mean_and_keeps_parameter_names():
    model = DeepSpeechModel(2, list("abc_"), 16, 1, SpectConfig(sample_rate=8000, window_size=0.02),
                            rng=np.random.default_rng(0))
    model.set_train(False)
    net = NetWithCTCLoss(model, return_per_utterance=True)
    names = [p.name for p in net.get_parameters()]
    assert names == [p.name for p in model.get_parameters()]
    assert all(not name.startswith("network.") for name in names)

    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 1, 81, 20)).astype(np.float32)
    features[1, :, :, 15:] = 0
    feature_lengths = np.array([20, 15], np.int32)
    labels = np.array([[0, 0, 1], [2, 1, 0]], np.int32)
    label_lengths = np.array([3, 2], np.int32)
    loss, losses = net(*[ms.Tensor(a) for a in (features, feature_lengths, labels, label_lengths)])
    logits, logit_lengths = model(ms.Tensor(features), ms.Tensor(feature_lengths))
    ref_losses, _ = ref.batch_loss_and_grad(logits.asnumpy(), logit_lengths.asnumpy(), labels,
                                            label_lengths, blank=3)
    np.testing.assert_allclose(losses.asnumpy(), ref_losses, rtol=1e-5)
    assert float(loss.asnumpy()) == pytest.approx(ref_losses.mean(), rel=1e-5)
