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
from mindaudio.models.deepspeech2 import (_FREQ_CONV_GEOMETRY, _TIME_CONV_GEOMETRY, CONV_CHANNELS,
                                          _conv_out)

TRAIN_TO_FORWARD = 3.0


def forward_flops_per_second(hidden: int, layers: int, num_labels: int,
                             spect: SpectConfig = SpectConfig()) -> Dict[str, float]:
    """FLOPs of one forward pass per second of audio, by part, plus their 'total'.

    Per second: sample_rate / hop input frames; the first convolution halves them (time stride 2).
    """
    input_frames = spect.sample_rate / hop_size(spect)
    out_frames = input_frames
    for kernel, stride, padding in _TIME_CONV_GEOMETRY:
        out_frames = out_frames / stride  # per-second rate; edge effects are negligible
    freq = num_freq_bins(spect)
    (k1f, s1f, p1f), (k2f, s2f, p2f) = _FREQ_CONV_GEOMETRY
    k1t, k2t = _TIME_CONV_GEOMETRY[0][0], _TIME_CONV_GEOMETRY[1][0]
    freq1 = _conv_out(freq, k1f, s1f, p1f)
    freq2 = _conv_out(freq1, k2f, s2f, p2f)
    conv1 = CONV_CHANNELS * freq1 * out_frames * (1 * k1f * k1t)
    conv2 = CONV_CHANNELS * freq2 * out_frames * (CONV_CHANNELS * k2f * k2t)
    lstm_in = CONV_CHANNELS * freq2
    lstm = 0.0
    for layer in range(layers):
        size = lstm_in if layer == 0 else hidden
        lstm += 2 * out_frames * 4 * hidden * (size + hidden)  # two directions
    fc = out_frames * hidden * num_labels
    parts = {"conv": 2 * (conv1 + conv2), "lstm": 2 * lstm, "fc": 2 * fc}
    parts["total"] = sum(parts.values())
    return parts


def train_flops_per_second(hidden: int, layers: int, num_labels: int,
                           spect: SpectConfig = SpectConfig()) -> float:
    """FLOPs of forward + backward per second of audio (3x the forward pass)."""
    return TRAIN_TO_FORWARD * forward_flops_per_second(hidden, layers, num_labels, spect)["total"]
