"""Why the package caps oneDNN at AVX2 (`ONEDNN_MAX_CPU_ISA`, set in mindaudio/__init__.py): the
model's kernels timed under each cap, each cap in a fresh process (oneDNN reads the variable once).

    python bench/isa_cap.py                        # AVX2, AVX512_CORE, ALL (no cap)
    python bench/isa_cap.py --caps AVX2,ALL

Rows: the two convolutions of DeepSpeech2 (forward, batch 4 x 800 frames of 161 bins), one LSTM
direction of the full model (forward, batch 2 x 400 steps, 1024 -> 1024) and a 2048^3 fp32
MatMul; best of 3 after a warm-up, graph mode. On a CPU without AVX-512 the caps above AVX2 change
nothing. Prints the CPU's flags; the machine may be shared: compare caps of one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.child_process import RESULT_MARK, print_marked, run_child  # noqa: E402
from bench.host_info import cpu_line  # noqa: E402


def measure() -> dict:
    """The kernels' times under this process's ONEDNN_MAX_CPU_ISA (set before MindSpore loads)."""
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from mindaudio.models.deepspeech2 import CONV_GEOMETRY, conv2d_layer

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

    class Apply(nn.Cell):
        def __init__(self, op):
            super().__init__()
            self.op = op

        def construct(self, x, y):
            return self.op(x, y)

    def best_of_three(cell, *inputs):
        run = lambda: cell(*inputs)[0].asnumpy()  # noqa: E731
        run()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    rng = np.random.default_rng(0)
    conv1, conv2 = (conv2d_layer(geometry) for geometry in CONV_GEOMETRY)
    features = Tensor(rng.standard_normal((4, 1, 161, 800), dtype=np.float32))
    conv1_out = conv1(features)
    lstm = nn.LSTM(1024, 1024, 1, batch_first=True)
    square = Tensor(rng.standard_normal((2048, 2048), dtype=np.float32))
    matmul_s = best_of_three(Apply(ops.MatMul()), square, square)
    return {"conv1_s": best_of_three(conv1, features), "conv2_s": best_of_three(conv2, conv1_out),
            "lstm_s": best_of_three(lstm, Tensor(rng.standard_normal((2, 400, 1024), dtype=np.float32))),
            "matmul_gflops": 2 * 2048 ** 3 / matmul_s / 1e9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", default="AVX2,AVX512_CORE,ALL", help="ONEDNN_MAX_CPU_ISA values, comma-separated")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print_marked(RESULT_MARK, measure())
        return 0
    print(f"CPU: {cpu_line()}")
    print("| ONEDNN_MAX_CPU_ISA | conv1 (s) | conv2 (s) | LSTM direction (s) | MatMul GFLOP/s |")
    print("|---|---|---|---|---|")
    for cap in args.caps.split(","):
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=cap)
        run = run_child([sys.executable, str(Path(__file__).resolve()), "--child"], cwd=REPO, env=env)
        mark, r = run.first(RESULT_MARK)
        if mark is None:
            print(f"| {cap} | failed (exit {run.returncode}): {run.stderr_tail.strip().splitlines()[-1:]} | | | |")
            continue
        print(f"| {cap} | {r['conv1_s']:.3f} | {r['conv2_s']:.3f} | {r['lstm_s']:.3f} | {r['matmul_gflops']:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
