"""Analytic FLOP count of DeepSpeech2 per second of audio.

Counts the multiply-accumulates of the convolutions, the LSTM matrix products and the classifier
(2 FLOPs each); element-wise work (BatchNorm, tanh, LSTM gates, masks, CTC) is left out, as it
is a fraction of a percent of the total. A training step costs about 3x the forward pass: the
backward pass computes one product for the inputs' gradient and one for the weights' gradient
per forward product.
"""
from __future__ import annotations

from typing import Dict

from mindaudio.config import SpectConfig
from mindaudio.data.features import hop_size, num_freq_bins
from mindaudio.models.deepspeech2 import CONV_GEOMETRY, conv_freq_sizes, time_stride

TRAIN_TO_FORWARD = 3.0


def forward_flops_per_second(hidden: int, layers: int, num_labels: int,
                             spect: SpectConfig = SpectConfig()) -> Dict[str, float]:
    """FLOPs of one forward pass per second of audio, by part, plus their 'total'.

    Per second: sample_rate / hop input frames; the first convolution halves them (time stride 2).
    """
    # Per-second rates: edge effects of the padding are negligible.
    out_frames = spect.sample_rate / hop_size(spect) / time_stride()
    freq_sizes = conv_freq_sizes(num_freq_bins(spect))
    conv_macs = [conv.out_channels * freq * out_frames * conv.in_channels * conv.kernel[0] * conv.kernel[1]
                 for conv, freq in zip(CONV_GEOMETRY, freq_sizes)]
    lstm_in = CONV_GEOMETRY[-1].out_channels * freq_sizes[-1]
    lstm = 0.0
    for layer in range(layers):
        size = lstm_in if layer == 0 else hidden
        lstm += 2 * out_frames * 4 * hidden * (size + hidden)  # two directions
    fc = out_frames * hidden * num_labels
    parts = {"conv": 2 * sum(conv_macs), "lstm": 2 * lstm, "fc": 2 * fc}
    parts["total"] = sum(parts.values())
    return parts


def train_flops_per_second(hidden: int, layers: int, num_labels: int,
                           spect: SpectConfig = SpectConfig()) -> float:
    """FLOPs of forward + backward per second of audio (3x the forward pass)."""
    return TRAIN_TO_FORWARD * forward_flops_per_second(hidden, layers, num_labels, spect)["total"]
