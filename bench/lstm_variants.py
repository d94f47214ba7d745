"""One bidirectional LSTM layer of the model, forward + backward, computed three ways, interleaved in
one run: which way of running the directions is fastest on this machine.

    python bench/lstm_variants.py                       # H1024, batch 2 x 300 steps (a 6 s utterance pair)
    python bench/lstm_variants.py --hidden 1024 --batch 8 --steps 300 --repeats 5

Variants (all compute the same layer; only `masked` is exact for a batch with padding):
- masked: the model's `LSTMLayer(masked=True)`: two single-direction fused LSTM kernels, the backward
  one on each utterance reversed within its own length (ReverseSequence in and out), outputs summed
  and zeroed beyond each length;
- unmasked: `LSTMLayer(masked=False)`: the original's computation, the backward direction on the whole
  padded sequence reversed;
- fused_bidirectional: `nn.LSTM(bidirectional=True)`: both directions in one kernel call (the
  device's own bidirectional primitive), the halves of its output summed; not exact with padding.
Each row: the median of --repeats timed gradient computations (weights and input), after two
untimed ones, and the useful GFLOP/s (2 x multiply-adds of the gate products, x3 for
forward + backward) against the fp32 matmul rate measured in the same run as `bench/run.py`
measures it (`measure.matmul_rate`: the better of MindSpore's and numpy's), so the shares compare
with its efficiency rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import mindaudio  # noqa: E402,F401  (before mindspore)
import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from bench.host_info import cpu_line, load_average  # noqa: E402
from bench.measure import matmul_rate  # noqa: E402
from mindaudio.models.deepspeech2 import LSTMLayer  # noqa: E402


class _FusedBidirectional(nn.Cell):
    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(hidden, hidden, num_layers=1, has_bias=True, batch_first=False, bidirectional=True)

    def construct(self, x, lengths):
        output, _ = self.lstm(x)
        return output[:, :, :self.hidden] + output[:, :, self.hidden:]


class _Gradients(nn.Cell):
    """Gradients of sum(layer(x, lengths) * upstream) with respect to x and the layer's parameters."""

    def __init__(self, layer: nn.Cell, upstream: np.ndarray, lengths: np.ndarray):
        super().__init__()
        self.layer = layer
        self.upstream = Tensor(upstream)
        self.lengths = Tensor(lengths)
        self.params = ms.ParameterTuple(layer.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def loss(self, x):
        return (self.layer(x, self.lengths) * self.upstream).sum()

    def construct(self, x):
        return self.grad(self.loss, self.params)(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300, help="time steps (output frames)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    load_before = load_average()
    rng = np.random.default_rng(0)
    hidden, batch, steps = args.hidden, args.batch, args.steps
    x = Tensor(rng.standard_normal((steps, batch, hidden)).astype(np.float32))
    # Every utterance but the first is 10% shorter, so the masked variant has padding to skip.
    lengths = np.array([steps] + [steps - steps // 10] * (batch - 1), np.int32)
    upstream = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
    variants = {"masked": LSTMLayer(hidden, hidden, bidirectional=True, masked=True),
                "unmasked": LSTMLayer(hidden, hidden, bidirectional=True, masked=False),
                "fused_bidirectional": _FusedBidirectional(hidden)}
    gradients = {name: _Gradients(layer, upstream, lengths) for name, layer in variants.items()}

    def run(cell):
        input_grads, weight_grads = cell(x)
        for grad in (*input_grads, *weight_grads):
            grad.asnumpy()

    for cell in gradients.values():
        run(cell)
        run(cell)
    times = {name: [] for name in gradients}
    for _ in range(args.repeats):
        for name, cell in gradients.items():
            start = time.perf_counter()
            run(cell)
            times[name].append(time.perf_counter() - start)
    matmul = matmul_rate(size=2048, repeats=5)["limit_gflops"]
    # Per direction and step: input and recurrent gate products, 2 x B x H x 4H multiply-adds each.
    flops = 3 * 2 * steps * (2 * 2 * batch * hidden * 4 * hidden)

    print(f"One bidirectional LSTM layer H{hidden}, batch {batch} x {steps} steps, forward + backward")
    print(cpu_line())
    print(f"load average before {load_before}, after {load_average()}; fp32 matmul {matmul:.0f} GFLOP/s")
    print()
    print("| variant | s (median) | useful GFLOP/s | share of matmul rate | vs masked |")
    print("|---|---|---|---|---|")
    masked = float(np.median(times["masked"]))
    for name, values in times.items():
        seconds = float(np.median(values))
        print(f"| {name} | {seconds:.3f} | {flops / seconds / 1e9:.1f} | {100 * flops / seconds / 1e9 / matmul:.1f}% "
              f"| {masked / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
