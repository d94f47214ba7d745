"""The device side of one optimizer update, as graph-mode Cells.

An update is K micro-batches (`TrainingConfig.accumulation_steps`): `AccumulateGradients` runs
forward and backward on one micro-batch and adds its gradients into accumulation buffers;
`ApplyGradients` averages the buffers, clips them by global norm, runs Adam and clears the
buffers. With K = 1 this is an ordinary train step; with K = N it reproduces N data-parallel
ranks of the same micro-batch size (gradients are averaged the same way).

A micro-batch whose loss or gradients are not finite adds nothing and reports it; the host then
discards the whole update (`ClearGradients`) instead of applying it, and counts it.
"""
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

_add_masked = ops.MultitypeFuncGraph("add_masked")
_scale = ops.MultitypeFuncGraph("scale")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_zero = ops.MultitypeFuncGraph("zero")
_all_finite = ops.MultitypeFuncGraph("all_finite")


@_add_masked.register("Tensor", "Tensor", "Tensor")
def _add_masked_fn(finite, accum, grad):
    # select, not multiply: 0 * nan is nan.
    return ops.assign_add(accum, ops.select(finite, grad, ops.zeros_like(grad)))


@_scale.register("Tensor", "Tensor")
def _scale_fn(factor, x):
    return x * factor.astype(x.dtype)


@_square_sum.register("Tensor")
def _square_sum_fn(x):
    return ops.square(x.astype(ms.float32)).sum()


@_zero.register("Tensor")
def _zero_fn(x):
    return ops.assign(x, ops.zeros_like(x))


@_all_finite.register("Tensor")
def _all_finite_fn(x):
    return ops.isfinite(x).all()


class AccumulateGradients(nn.Cell):
    """Forward + backward of one micro-batch; gradients (still multiplied by the loss scale) are
    added into `accumulators` when everything is finite.

    Inputs: the loss network's inputs (features (B, 1, F, T) float32, feature_lengths (B,) int32,
    labels (B, S) int32, label_lengths (B,) int32).
    Outputs: (loss scalar float32, finite scalar bool).
    """

    def __init__(self, loss_net: nn.Cell, weights: ParameterTuple, accumulators: ParameterTuple,
                 loss_scale: float, grad_reducer: nn.Cell = None):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.weights = weights
        self.accumulators = accumulators
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.loss_scale = Tensor(loss_scale, ms.float32)
        self.hyper_map = ops.HyperMap()
        # Data parallel: averages gradients over ranks; identity on one device.
        self.grad_reducer = grad_reducer if grad_reducer is not None else ops.identity
        self.local_decision = grad_reducer is None

    def construct(self, features, feature_lengths, labels, label_lengths):
        loss = self.loss_net(features, feature_lengths, labels, label_lengths)
        sens = ops.fill(loss.dtype, loss.shape, self.loss_scale)
        grads = self.grad(self.loss_net, self.weights)(features, feature_lengths, labels, label_lengths, sens)
        grads = self.grad_reducer(grads)
        # Data parallel: decide from the averaged gradients only, which every rank shares, so all
        # ranks skip or apply the same steps (a non-finite loss makes its gradients non-finite too).
        finite = ops.isfinite(loss) if self.local_decision else ops.ones((), ms.bool_)
        for ok in self.hyper_map(_all_finite, grads):
            finite = ops.logical_and(finite, ok)
        done = self.hyper_map(ops.partial(_add_masked, finite), self.accumulators, grads)
        return ops.depend(loss, done), finite


class ApplyGradients(nn.Cell):
    """Average the accumulated gradients, undo the loss scale, clip by global norm, step the
    optimizer and clear the buffers.

    Input: micro_batches, scalar float32, how many micro-batches were accumulated.
    Output: the global gradient norm before clipping (scalar float32).
    """

    def __init__(self, optimizer: nn.Optimizer, accumulators: ParameterTuple, loss_scale: float,
                 max_grad_norm: float):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.accumulators = accumulators
        self.loss_scale = Tensor(loss_scale, ms.float32)
        self.max_grad_norm = Tensor(max_grad_norm, ms.float32)
        self.clip = max_grad_norm > 0
        self.hyper_map = ops.HyperMap()

    def construct(self, micro_batches):
        grads = self.hyper_map(ops.partial(_scale, 1.0 / (self.loss_scale * micro_batches)), self.accumulators)
        norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        if self.clip:
            factor = self.max_grad_norm / ops.maximum(norm, self.max_grad_norm)
            grads = self.hyper_map(ops.partial(_scale, factor), grads)
        updated = self.optimizer(grads)
        cleared = self.hyper_map(_zero, ops.depend(self.accumulators, updated))
        return ops.depend(norm, cleared)


class ClearGradients(nn.Cell):
    """Empty the accumulation buffers without an update (a non-finite update is discarded)."""

    def __init__(self, accumulators: ParameterTuple):
        super().__init__(auto_prefix=False)
        self.accumulators = accumulators
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(_zero, self.accumulators)


def make_accumulators(weights: ParameterTuple) -> ParameterTuple:
    """Zero buffers shaped like `weights`, named `accum.<name>` (never saved in checkpoints)."""
    return weights.clone(prefix="accum", init="zeros")
