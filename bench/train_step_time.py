"""Time one DeepSpeech2 training step (forward, backward, Adam) on this machine.

Ours (padding-exact masking) against the original's computation (`masked=False`) in the same run,
for a given model size, batch and frame count; compile time reported separately.

    python bench/train_step_time.py --hidden 1024 --layers 5 --batch 2 --frames 1250
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import mindaudio  # noqa: E402,F401  (before mindspore)
import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from mindaudio.config import DEFAULT_LABELS, OptimConfig, SpectConfig  # noqa: E402
from mindaudio.data.features import num_freq_bins  # noqa: E402
from mindaudio.models.deepspeech2 import DeepSpeechModel  # noqa: E402
from mindaudio.training.train_step import build_update  # noqa: E402


def time_steps(hidden: int, layers: int, batch: int, frames: int, steps: int, masked: bool):
    """(compile+first step seconds, median steady step seconds); the update is the trainer's
    (`build_update` with the default `OptimConfig`)."""
    spect = SpectConfig()
    rng = np.random.default_rng(0)
    model = DeepSpeechModel(None, DEFAULT_LABELS, hidden, layers, spect, masked=masked, rng=rng)
    update = build_update(model, OptimConfig())
    features = Tensor(rng.normal(size=(batch, 1, num_freq_bins(spect), frames)).astype(np.float32))
    lengths = Tensor(np.full(batch, frames, np.int32))
    label_len = frames // 8
    labels = Tensor(rng.integers(0, len(DEFAULT_LABELS) - 1, size=(batch, label_len)).astype(np.int32))
    label_lengths = Tensor(np.full(batch, label_len, np.int32))

    def step():
        loss, _ = update.add_micro_batch(features, lengths, labels, label_lengths)
        update.finish()
        return loss

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1250)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    audio_seconds = args.batch * args.frames / 100.0
    rows = []
    for name, masked in (("original (unmasked)", False), ("ours (masked)", True)):
        first, step = time_steps(args.hidden, args.layers, args.batch, args.frames, args.steps, masked)
        rows.append((name, first, step, audio_seconds / step))
    print(f"DeepSpeech2 H{args.hidden}x{args.layers}, batch {args.batch} x {args.frames} frames "
          f"({audio_seconds:.1f} s of audio per step), median of {args.steps} steps")
    print(f"{'variant':<22}{'first step (s)':>16}{'step (s)':>10}{'audio s/s':>11}")
    for name, first, step, speed in rows:
        print(f"{name:<22}{first:>16.2f}{step:>10.2f}{speed:>11.2f}")
    print(f"ours / original step time: {rows[1][2] / rows[0][2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
