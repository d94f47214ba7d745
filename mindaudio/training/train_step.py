"""The device side of one optimizer update, as graph-mode Cells.

An update is K micro-batches (`TrainingConfig.accumulation_steps`): `AccumulateGradients` runs
forward and backward on one micro-batch and adds its gradients into accumulation buffers;
`ApplyGradients` averages the buffers, clips them by global norm, runs Adam and clears the
buffers. With K = 1 this is an ordinary train step; with K = N it reproduces N data-parallel
ranks of the same micro-batch size (gradients are averaged the same way).

A micro-batch whose loss or gradients are not finite adds nothing and reports it; the host then
discards the whole update (`ClearGradients`) instead of applying it, and counts it. A discarded
update leaves every value as it was before its first micro-batch: the forward passes in training
mode have already moved BatchNorm's running mean and variance, so those are copied aside before
the first micro-batch and copied back when the update is discarded (`CopyParameters`).

`build_update` builds all of it for a model and an `OptimConfig`; the trainer and the benchmarks
both call it, so what is timed is what trains. Its Adam update is `FusedApplyGradients` (two passes
over memory, `fused_adam`'s kernels) when the kernels build on this machine, else
`ApplyGradients` with MindSpore's `nn.Adam`; both give the same values up to float rounding and
keep their state in the same `nn.Adam` parameters, so checkpoints do not depend on which ran.
"""
from typing import Optional, Tuple

import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops

from mindaudio.config import OptimConfig
from mindaudio.models.loss import NetWithCTCLoss
from mindaudio.training.fused_adam import Kernels, load_kernels

_add_masked = ops.MultitypeFuncGraph("add_masked")
_scale = ops.MultitypeFuncGraph("scale")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_zero = ops.MultitypeFuncGraph("zero")
_all_finite = ops.MultitypeFuncGraph("all_finite")
_copy = ops.MultitypeFuncGraph("copy")


@_add_masked.register("Tensor", "Tensor", "Tensor")
def _add_masked_fn(finite, accum, grad):
    # select, not multiply: 0 * nan is nan.
    return ops.assign_add(accum, ops.select(finite, grad, ops.zeros_like(grad)))


@_scale.register("Tensor", "Tensor")
def _scale_fn(factor, x):
    return x * factor.astype(x.dtype)


@_square_sum.register("Tensor")
def _square_sum_fn(x):
    # Rows first: on CPU one ReduceSum over a whole (4096, 1024) tensor is about 10x slower than
    # over its last axis and then the rows (it was 0.36 s of the full model's 0.6 s update).
    return ops.square(x.astype(ms.float32)).sum(axis=-1).sum()


@_zero.register("Tensor")
def _zero_fn(x):
    return ops.assign(x, ops.zeros_like(x))


@_copy.register("Tensor", "Tensor")
def _copy_fn(target, source):
    return ops.assign(target, source)


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
        # Each tensor's sum of squares (bench/optimizer_update.py swaps in the slower one it replaced).
        self.square_sum = _square_sum

    def construct(self, micro_batches):
        grads = self.hyper_map(ops.partial(_scale, 1.0 / (self.loss_scale * micro_batches)), self.accumulators)
        norm = ops.sqrt(ops.addn(self.hyper_map(self.square_sum, grads)))
        if self.clip:
            factor = self.max_grad_norm / ops.maximum(norm, self.max_grad_norm)
            grads = self.hyper_map(ops.partial(_scale, factor), grads)
        updated = self.optimizer(grads)
        cleared = self.hyper_map(_zero, ops.depend(self.accumulators, updated))
        return ops.depend(norm, cleared)


class FusedApplyGradients(nn.Cell):
    """`ApplyGradients` with `nn.Adam`, in two passes over memory: the global norm of the
    accumulated gradients (one read), then one pass that unscales, averages and clips them (one
    factor), adds the weight decay, steps Adam and clears the buffers (`fused_adam`).

    `adam` holds the state (moments, beta powers, step, learning rate) and its settings (betas,
    eps, which parameters decay; `weight_decay` as given to it, its `loss_scale`: a value other than
    1 divides the gradients once more, as `make_adam` documents), so a checkpoint is the same
    whichever update ran.

    Input: micro_batches, scalar float32, how many micro-batches were accumulated.
    Output: the global gradient norm before clipping (scalar float32).
    """

    def __init__(self, kernels: Kernels, adam: nn.Adam, accumulators: ParameterTuple, loss_scale: float,
                 max_grad_norm: float, weight_decay: float):
        super().__init__(auto_prefix=False)
        if adam.dynamic_lr or adam.is_group or adam.use_nesterov or adam.use_amsgrad:
            raise ValueError("FusedApplyGradients covers plain Adam with one static learning rate")
        self.kernels = kernels
        self.optimizer = adam
        self.weights = adam.parameters
        self.moment1 = adam.moment1
        self.moment2 = adam.moment2
        self.accumulators = accumulators
        self.loss_scale = Tensor(loss_scale, ms.float32)
        # nn.Adam(loss_scale=L) divides the gradients by L after adding L * weight_decay * weight.
        self.adam_divisor = Tensor(adam.loss_scale, ms.float32)
        self.decay = Tensor([weight_decay if flag else 0.0 for flag in adam.decay_flags], ms.float32)
        self.max_grad_norm = Tensor(max_grad_norm, ms.float32)
        self.clip = max_grad_norm > 0
        self.one = Tensor(1.0, ms.float32)

    def construct(self, micro_batches):
        adam = self.optimizer
        unscale = self.one / (self.loss_scale * micro_batches)
        square_sum = self.kernels.square_sum(unscale.reshape((1,)), *self.accumulators)
        norm = ops.sqrt(square_sum.reshape(()))
        factor = unscale / self.adam_divisor
        if self.clip:
            factor = factor * (self.max_grad_norm / ops.maximum(norm, self.max_grad_norm))
        step = ops.assign_add(adam.global_step, adam.global_step_increase_tensor)
        beta1_power = ops.assign(adam.beta1_power, adam.beta1_power * adam.beta1)
        beta2_power = ops.assign(adam.beta2_power, adam.beta2_power * adam.beta2)
        rate = adam.learning_rate * ops.sqrt(self.one - beta2_power) / (self.one - beta1_power)
        hyper = ops.stack([factor, rate, adam.beta1, adam.beta2, adam.eps])
        done = self.kernels.fused_adam(ops.depend(hyper, step), self.decay, *self.accumulators, *self.weights,
                                       *self.moment1, *self.moment2)
        return ops.depend(norm, done)


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


class CopyParameters(nn.Cell):
    """Assign every parameter of `sources` to the parameter at the same position of `targets`."""

    def __init__(self, sources: ParameterTuple, targets: ParameterTuple):
        super().__init__(auto_prefix=False)
        self.sources = sources
        self.targets = targets
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(_copy, self.targets, self.sources)


def make_adam(weights: ParameterTuple, optim: OptimConfig) -> nn.Adam:
    """Adam as `optim` sets it up, at `optim.learning_rate` (the trainer anneals it per epoch).

    `ApplyGradients` has already divided the gradients by the loss scale. With
    `optim.divide_by_loss_scale_twice` Adam divides them by it once more (MindSpore's
    `Adam(loss_scale=...)`), as the original's training effectively did (its Adam was built with
    `loss_scale` while its training cell did not scale the loss): Adam then sees gradients
    `loss_scale` times smaller, so epsilon, and the weight decay added after that division, weigh
    `loss_scale` times more. The plain setting (False) is ordinary Adam on the true gradients.
    """
    loss_scale = optim.loss_scale if optim.divide_by_loss_scale_twice else 1.0
    return nn.Adam(weights, learning_rate=optim.learning_rate, beta1=optim.betas[0], beta2=optim.betas[1],
                   eps=optim.epsilon, weight_decay=optim.weight_decay, loss_scale=loss_scale)


class Update:
    """One optimizer update of `model` from K micro-batches, as training runs it.

    Call `add_micro_batch` K times, then `finish` once: it applies the averaged, unscaled,
    clipped gradients with Adam, or, when any micro-batch had a non-finite loss or gradient,
    discards the update and puts BatchNorm's running statistics back as they were before the
    first micro-batch (so a skipped update changes nothing at all).

    Attributes used directly by the benchmarks (compile timing): `accumulate`, `apply`,
    `optimizer`; `fused` tells whether `apply` is `FusedApplyGradients`; `dynamic_shapes` whether
    `accumulate` is one graph for every input shape (see `build_update`).
    """

    def __init__(self, model: nn.Cell, optim: OptimConfig, world_size: int = 1, fused: Optional[bool] = None,
                 dynamic_shapes: bool = False):
        weights = ParameterTuple(model.trainable_params())
        self.optimizer = make_adam(weights, optim)
        accumulators = make_accumulators(weights)
        reducer = None
        if world_size > 1:
            # Data parallel: the average over ranks, the same on every rank.
            reducer = nn.DistributedGradReducer(weights, mean=True, degree=world_size)
        self.accumulate = AccumulateGradients(NetWithCTCLoss(model), weights, accumulators, optim.loss_scale,
                                              reducer)
        # fused None: the fused update when its kernels build here; False: MindSpore's composition.
        # The kernels are host C++ reading and writing float32 only: on Ascend or GPU the
        # parameters live in device memory, so only a CPU run can use them.
        kernels = None
        on_cpu = ms.get_context("device_target") == "CPU"
        if fused is not False and on_cpu and all(p.dtype == ms.float32 for p in weights):
            kernels = load_kernels()
        if fused and kernels is None:
            raise RuntimeError("the fused optimizer kernels are unavailable: no C++ compiler or the build failed "
                               "(see the warning above), MINDAUDIO_FUSED_ADAM=0, a device other than the CPU, or "
                               "parameters not float32")
        if kernels is not None:
            self.apply = FusedApplyGradients(kernels, self.optimizer, accumulators, optim.loss_scale,
                                             optim.max_grad_norm, optim.weight_decay)
        else:
            self.apply = ApplyGradients(self.optimizer, accumulators, optim.loss_scale, optim.max_grad_norm)
        self.fused = kernels is not None
        self.clear = ClearGradients(accumulators)
        self.accumulate.set_train(True)
        if dynamic_shapes:
            self.accumulate.set_inputs(*dynamic_inputs(model.num_freq_bins))
        statistics = model.untrainable_params()
        self._keep = self._restore = None
        if statistics:
            statistics = ParameterTuple(statistics)
            kept = statistics.clone(prefix="kept", init="same")
            self._keep = CopyParameters(statistics, kept)
            self._restore = CopyParameters(kept, statistics)
        self.micro_batches = 0
        self._finite = True

    def add_micro_batch(self, features, feature_lengths, labels, label_lengths) -> Tuple[float, bool]:
        """Forward and backward of one micro-batch (the loss network's inputs, see
        `AccumulateGradients`). Returns (loss, finite) as Python values."""
        if self.micro_batches == 0 and self._keep is not None:
            self._keep()
        loss, finite = self.accumulate(features, feature_lengths, labels, label_lengths)
        self.micro_batches += 1
        finite = bool(finite.asnumpy())
        self._finite = self._finite and finite
        return float(loss.asnumpy()), finite

    def finish(self) -> Optional[float]:
        """Apply the update from the micro-batches added since the last `finish`; returns the
        global gradient norm before clipping, or None when the update was discarded."""
        if self.micro_batches == 0:
            raise RuntimeError("finish() without a micro-batch")
        micro_batches, finite = self.micro_batches, self._finite
        self.micro_batches, self._finite = 0, True
        if finite:
            return float(self.apply(Tensor(float(micro_batches), ms.float32)).asnumpy())
        self.clear()
        if self._restore is not None:
            self._restore()
        return None

    @property
    def dynamic_shapes(self) -> bool:
        """Whether `accumulate` is one graph for every input shape (see `build_update`)."""
        return self.accumulate.get_inputs() is not None

    def set_learning_rate(self, learning_rate: float) -> None:
        # Adam reads the rate from this Parameter inside the compiled graph.
        self.optimizer.learning_rate.set_data(Tensor(learning_rate, ms.float32))


def dynamic_inputs(freq_bins: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Placeholders of `AccumulateGradients`' inputs for any batch size, frame count and label
    padding: features (None, 1, freq_bins, None) float32, feature lengths (None,) int32, labels
    (None, None) int32, label lengths (None,) int32."""
    return (Tensor(shape=[None, 1, freq_bins, None], dtype=ms.float32), Tensor(shape=[None], dtype=ms.int32),
            Tensor(shape=[None, None], dtype=ms.int32), Tensor(shape=[None], dtype=ms.int32))


def build_update(model: nn.Cell, optim: OptimConfig, world_size: int = 1, fused: Optional[bool] = None,
                 dynamic_shapes: bool = False) -> Update:
    """The optimizer update of `model` (a network mapping (features, lengths) to (logits,
    lengths)) with CTC loss, as `optim` sets it up; `world_size` > 1 averages gradients over
    the data-parallel ranks (call after the collectives are initialised). `fused`: None uses the
    fused Adam kernels when they build on this machine, True requires them, False never uses them.

    dynamic_shapes: compile the forward + backward graph once for every input shape
    (`Cell.set_inputs` with the batch, frame and label axes unknown; needs `model.num_freq_bins`)
    instead of once per shape. MindSpore keeps a static graph's memory (about 2.4 GB of
    weight-sized kernel workspaces for the full model, plus the activations) for as long as the
    graph lives, so N shapes hold N times that; one dynamic graph holds one set, sized by the
    largest batch so far (bench/memory_shapes.py)."""
    return Update(model, optim, world_size, fused, dynamic_shapes)
