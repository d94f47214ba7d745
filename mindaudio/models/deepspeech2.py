"""DeepSpeech2 acoustic model: two 2-D convolutions, a stack of bidirectional LSTMs, a linear classifier.

Parameter names and shapes are those of MindAudio's original `DeepSpeechModel`, so its checkpoints
(bare model or training cell with optimizer state) load into this one.

Unlike the original, padding does not change any result (with `masked=True`, the default): the
convolution outputs are zeroed beyond each utterance's length, and the backward LSTM direction
starts at each utterance's true last frame instead of reading the padding first. An utterance then
gets the same logits alone or batched with longer ones (in eval mode; in training mode BatchNorm's
batch statistics still see the padded frames, as in the original and in deepspeech.pytorch).
`masked=False` reproduces the original's computation exactly.

`bidirectional=False` gives the streaming variant (DeepSpeech2 paper, section 3.5): forward-only
LSTMs followed by a lookahead (row) convolution over `lookahead_context` future frames, so each
output frame depends on a bounded amount of future audio. `fixed_normalisation=True` makes the
model normalise its input itself, per frequency bin, with statistics it stores (`feature_mean`,
`feature_std`, estimated on the training manifest): a frame's features then no longer depend on
the rest of the recording. `mindaudio.streaming` runs such a model chunk by chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from mindaudio.data.features import num_freq_bins


@dataclass(frozen=True)
class ConvGeometry:
    """One convolution of the front end, as (frequency, time) pairs."""
    in_channels: int
    out_channels: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]


CONV_CHANNELS = 32
# The one description of the convolutions: `MaskConv` builds its layers from it, and every
# length or size below (and the data pipeline, inference and the benchmarks through them) is
# derived from it. Only the first convolution strides in time.
CONV_GEOMETRY = (
    ConvGeometry(1, CONV_CHANNELS, kernel=(41, 11), stride=(2, 2), padding=(20, 5)),
    ConvGeometry(CONV_CHANNELS, CONV_CHANNELS, kernel=(21, 11), stride=(2, 1), padding=(10, 5)),
)
_FREQ, _TIME = 0, 1


def conv_output_size(size, kernel: int, stride: int, padding: int):
    """Output length of one convolution axis; works on ints and integer numpy arrays."""
    return (size + 2 * padding - kernel) // stride + 1


def output_length(num_frames):
    """Number of logit frames the model emits for `num_frames` input frames: (n - 1) // 2 + 1.

    Accepts an int or an integer numpy array (or tensor). The data pipeline uses it to drop
    utterances whose transcript cannot fit in their output frames.
    """
    for conv in CONV_GEOMETRY:
        num_frames = conv_output_size(num_frames, conv.kernel[_TIME], conv.stride[_TIME],
                                      conv.padding[_TIME])
    return num_frames


def time_stride() -> int:
    """Input feature frames per output frame: the product of the convolutions' time strides."""
    return math.prod(conv.stride[_TIME] for conv in CONV_GEOMETRY)


def conv_freq_sizes(num_bins: int) -> Tuple[int, ...]:
    """Frequency bins after each convolution, for `num_bins` input bins."""
    sizes = []
    for conv in CONV_GEOMETRY:
        num_bins = conv_output_size(num_bins, conv.kernel[_FREQ], conv.stride[_FREQ], conv.padding[_FREQ])
        sizes.append(num_bins)
    return tuple(sizes)


def rnn_input_size(num_bins: int) -> int:
    """Features per frame entering the first LSTM, for `num_bins` feature rows
    (`data.features.num_freq_bins`): 32 channels x frequency bins left after the convs."""
    return CONV_GEOMETRY[-1].out_channels * conv_freq_sizes(num_bins)[-1]


def _time_mask(lengths: ms.Tensor, num_steps: int, dtype) -> ms.Tensor:
    """(B, num_steps) mask: 1 where step < lengths[b], else 0."""
    steps = ops.arange(0, num_steps, 1, dtype=lengths.dtype)
    return (steps.view(1, -1) < lengths.view(-1, 1)).astype(dtype)


def conv2d_layer(conv: ConvGeometry) -> nn.Conv2d:
    """The convolution `conv` describes, without bias (BatchNorm follows): input (B, C_in, F, T)
    float32 -> (B, C_out, F', T') with F', T' from `conv_output_size`."""
    pad_f, pad_t = conv.padding
    return nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel, stride=conv.stride,
                     pad_mode="pad", padding=(pad_f, pad_f, pad_t, pad_t), has_bias=False)


class MaskConv(nn.Cell):
    """The two convolution blocks (conv -> BatchNorm -> tanh), each output zeroed beyond the lengths.

    x: (B, 1, F, T) float; lengths: (B,) int32 output frames of these convs (same for both, since
    only the first one strides in time) -> (B, 32, F'', T'').
    """

    def __init__(self, masked: bool = True, rng: Optional[np.random.Generator] = None):
        super().__init__()
        self.masked = masked
        # Attribute order fixes the parameters' order in checkpoints: the original's conv1, bn1, conv2, bn2.
        first, second = CONV_GEOMETRY
        self.conv1 = conv2d_layer(first)
        self.bn1 = nn.BatchNorm2d(num_features=first.out_channels)
        self.conv2 = conv2d_layer(second)
        self.bn2 = nn.BatchNorm2d(num_features=second.out_channels)
        self.tanh = nn.Tanh()
        self._initialize_weights(rng if rng is not None else np.random.default_rng())

    def _initialize_weights(self, rng: np.random.Generator):
        # He-style normal init over kh * kw * out_channels, as the original (and deepspeech.pytorch).
        for conv in (self.conv1, self.conv2):
            fan = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
            conv.weight.set_data(ms.Tensor(
                rng.normal(0.0, np.sqrt(2.0 / fan), conv.weight.shape).astype(np.float32)))
        for bn in (self.bn1, self.bn2):
            bn.gamma.set_data(ms.Tensor(np.ones(bn.gamma.shape, np.float32)))
            bn.beta.set_data(ms.Tensor(np.zeros(bn.beta.shape, np.float32)))

    def _mask(self, x, lengths):
        if not self.masked:
            return x
        mask = _time_mask(lengths, x.shape[3], x.dtype)
        return x * mask.view(mask.shape[0], 1, 1, mask.shape[1])

    def construct(self, x, lengths):
        # tanh(BN(0)) is not 0: without the mask, padded frames would leak into conv2's
        # receptive field at the end of every shorter utterance.
        x = self._mask(self.tanh(self.bn1(self.conv1(x))), lengths)
        x = self._mask(self.tanh(self.bn2(self.conv2(x))), lengths)
        return x


class LSTMLayer(nn.LSTM):
    """One LSTM layer; when bidirectional, the two directions' outputs are summed (as the original).

    Subclassing nn.LSTM keeps the original's parameter names (`weight_ih_l0`, `..._reverse`) and
    reuses the device's own single-direction kernel (`self.rnn`: fused ops.LSTM on CPU/GPU,
    DynamicRNN on Ascend). With `masked=True` the backward direction runs on each utterance
    reversed within its own length, so it starts at the true last frame; nn.LSTM's exact
    `seq_length` path would unroll every step on CPU (slow to compile).

    x: (T, B, input_size); lengths: (B,) int32 -> (T, B, hidden_size), zero beyond the lengths
    when masked.
    """

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = True,
                 masked: bool = True):
        super().__init__(input_size=input_size, hidden_size=hidden_size, num_layers=1,
                         has_bias=True, batch_first=False, bidirectional=bidirectional)
        self.masked = masked
        self.reverse_in_length = ops.ReverseSequence(seq_dim=0, batch_dim=1)
        self.reverse_all = ops.ReverseV2(axis=[0])

    def _direction(self, x, index: int):
        zeros = ops.zeros((x.shape[1], self.hidden_size), x.dtype)
        output, _ = self.rnn(x, (zeros, zeros), None, self.w_ih_list[index], self.w_hh_list[index],
                             self.b_ih_list[index], self.b_hh_list[index])
        return output.astype(x.dtype)

    def construct(self, x, lengths):
        output = self._direction(x, 0)
        if self.bidirectional:
            if self.masked:
                backward = self.reverse_in_length(
                    self._direction(self.reverse_in_length(x, lengths), 1), lengths)
            else:
                backward = self.reverse_all(self._direction(self.reverse_all(x), 1))
            output = output + backward
        if self.masked:
            mask = _time_mask(lengths, x.shape[0], x.dtype).transpose(1, 0)
            output = output * mask.view(mask.shape[0], mask.shape[1], 1)
        return output


class BatchRNN(nn.Cell):
    """Stack of `num_layers` LSTM layers in `lstms` (names `lstms.{i}.weight_ih_l0`, ...).

    x: (T, B, input_size); lengths: (B,) int32 -> (T, B, hidden_size). With `dropout` > 0 the
    input of every layer after the first and the last layer's output are dropped out in training.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool = True,
                 masked: bool = True, rng: Optional[np.random.Generator] = None, dropout: float = 0.0):
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.lstms = nn.CellList([
            LSTMLayer(size, hidden_size, bidirectional=bidirectional, masked=masked)
            for size in sizes])
        # Between layers and after the last one; none at all when 0 (the original's model).
        # Dropout keeps zeros zero, so the padding stays zero and results stay padding-free.
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None
        self._initialize_weights(rng if rng is not None else np.random.default_rng(), hidden_size)

    def _initialize_weights(self, rng: np.random.Generator, hidden_size: int):
        # Same distribution as nn.LSTM's own init, drawn from `rng` so a seed reproduces it.
        bound = 1.0 / math.sqrt(hidden_size)
        for param in self.lstms.get_parameters():
            param.set_data(ms.Tensor(rng.uniform(-bound, bound, param.shape).astype(np.float32)))

    def construct(self, x, lengths):
        for index, layer in enumerate(self.lstms):
            if self.dropout is not None and index > 0:
                x = self.dropout(x)
            x = layer(x, lengths)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class Lookahead(nn.Cell):
    """Row convolution over future frames, one weight per feature (DeepSpeech2 paper, eq. 5):
    out[t, b, d] = sum_{j=0..context} weight[j, d] * x[t + j, b, d], with x zero past the end.

    x: (T, B, D) float, zero beyond each utterance's length (the masked LSTM output), so the
    result does not depend on padding -> (T, B, D). Parameter `weight`: (context + 1, D).
    """

    def __init__(self, num_features: int, context: int):
        super().__init__()
        if context < 0:
            raise ValueError(f"lookahead context must be >= 0, got {context}")
        self.context = context
        # Starts as the identity (weight 1 on the current frame, 0 on the future ones): the model
        # begins as a plain forward-only DeepSpeech2 and learns how much future to mix in. With
        # deepspeech.pytorch's init (uniform +-1/sqrt(context + 1), random signs over every frame)
        # the digits recipe stayed at 100% validation WER for 8 epochs (see the streaming notes).
        weight = np.zeros((context + 1, num_features), np.float32)
        weight[0] = 1.0
        self.weight = ms.Parameter(ms.Tensor(weight), name="weight")

    def construct(self, x):
        t = x.shape[0]
        padded = ops.concat((x, ops.zeros((self.context, x.shape[1], x.shape[2]), x.dtype)), 0)
        out = x * self.weight[0]
        for j in range(1, self.context + 1):
            out = out + padded[j:j + t] * self.weight[j]
        return out


class SequenceWise(nn.Cell):
    """Applies `module` to every frame: (T, B, D) -> (T, B, D_out)."""

    def __init__(self, module: nn.Cell):
        super().__init__()
        self.module = module

    def construct(self, x):
        t, b = x.shape[0], x.shape[1]
        y = self.module(x.view(t * b, -1))
        return y.view(t, b, -1)


class DeepSpeechModel(nn.Cell):
    """DeepSpeech2 with MindAudio's parameter names.

    Args:
        batch_size: kept for the original's signature; any batch size works.
        labels: output alphabet; the blank is conventionally the last label.
        rnn_hidden_size, nb_layers: LSTM width and depth.
        audio_conf: anything with `sample_rate` and `window_size` (e.g. `SpectConfig`); fixes the
            number of frequency bins F = floor(sample_rate * window_size / 2) + 1.
        rnn_type: only "LSTM" (as the original).
        bidirectional: sum of both directions (True) or forward only, followed by a `Lookahead`
            over `lookahead_context` future frames (parameter `lookahead.weight`).
        lookahead_context: future output frames the lookahead layer sees (unidirectional only).
        fixed_normalisation: normalise the input per frequency bin with the stored parameters
            `feature_mean`, `feature_std` (F,) (`set_feature_statistics`); the features then
            come un-normalised (`SpectConfig.normalisation: fixed`).
        masked: True makes results independent of padding; False computes exactly as the original.
        dropout: probability of `BatchRNN`'s dropout in training (0: none, the original's model).
        rng: source of the initial weights (default: fresh entropy). Pass a seeded generator for
            reproducible initialisation.

    construct(x, lengths):
        x: (B, 1, F, T) float32 features, zero beyond each utterance's length (with
            fixed_normalisation: anything beyond it, the model zeroes it after normalising);
        lengths: (B,) int32 number of true frames.
        Returns logits (T', B, len(labels)) float32, time-major and pre-softmax, with
        T' = (T - 1) // 2 + 1, and output_lengths (B,) int32 = (lengths - 1) // 2 + 1.
    """

    def __init__(self, batch_size: int, labels: Sequence[str], rnn_hidden_size: int, nb_layers: int,
                 audio_conf, rnn_type: str = "LSTM", bidirectional: bool = True, masked: bool = True,
                 rng: Optional[np.random.Generator] = None, lookahead_context: int = 20,
                 fixed_normalisation: bool = False, dropout: float = 0.0):
        super().__init__()
        if rnn_type.upper() != "LSTM":
            raise ValueError(f"only rnn_type 'LSTM' is supported, got {rnn_type!r}")
        if nb_layers < 1:
            raise ValueError(f"nb_layers must be at least 1, got {nb_layers}")
        rng = rng if rng is not None else np.random.default_rng()
        self.batch_size = batch_size
        self.labels = list(labels)
        self.hidden_size = rnn_hidden_size
        self.hidden_layers = nb_layers
        self.rnn_type = rnn_type
        self.audio_conf = audio_conf
        self.bidirectional = bidirectional
        self.masked = masked
        self.lookahead_context = lookahead_context
        self.fixed_normalisation = fixed_normalisation
        self.num_freq_bins = num_freq_bins(audio_conf)
        if fixed_normalisation:
            # Not trained (requires_grad False): set from the training manifest, saved and loaded
            # with the weights like BatchNorm's moving statistics.
            self.feature_mean = ms.Parameter(ms.Tensor(np.zeros(self.num_freq_bins, np.float32)),
                                             name="feature_mean", requires_grad=False)
            self.feature_std = ms.Parameter(ms.Tensor(np.ones(self.num_freq_bins, np.float32)),
                                            name="feature_std", requires_grad=False)

        self.conv = MaskConv(masked=masked, rng=rng)
        self.RNN = BatchRNN(rnn_input_size(self.num_freq_bins),
                            rnn_hidden_size, nb_layers, bidirectional=bidirectional, masked=masked,
                            rng=rng, dropout=dropout)
        if not bidirectional:
            self.lookahead = Lookahead(rnn_hidden_size, lookahead_context)
        fully_connected = nn.Dense(rnn_hidden_size, len(self.labels), has_bias=False)
        bound = 1.0 / rnn_hidden_size  # the original's uniform(-1/in, 1/in)
        fully_connected.weight.set_data(ms.Tensor(
            rng.uniform(-bound, bound, fully_connected.weight.shape).astype(np.float32)))
        self.fc = SequenceWise(fully_connected)

    def set_feature_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Store the per-bin input statistics: mean, std (F,) float (std > 0)."""
        if not self.fixed_normalisation:
            raise ValueError("this model normalises nothing itself (fixed_normalisation is False)")
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        std = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean.shape != (self.num_freq_bins,) or std.shape != (self.num_freq_bins,):
            raise ValueError(f"feature statistics must have {self.num_freq_bins} bins, "
                             f"got {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("feature statistics must be finite with std > 0")
        self.feature_mean.set_data(ms.Tensor(mean))
        self.feature_std.set_data(ms.Tensor(std))

    def normalise_input(self, x, lengths):
        """(x - feature_mean[f]) / feature_std[f], zero beyond `lengths` input frames.
        x: (B, 1, F, T) float32; lengths: (B,) int32."""
        f = x.shape[2]
        x = (x - self.feature_mean.view(1, 1, f, 1)) / self.feature_std.view(1, 1, f, 1)
        mask = _time_mask(lengths, x.shape[3], x.dtype)
        return x * mask.view(mask.shape[0], 1, 1, mask.shape[1])

    def get_seq_lens(self, lengths):
        """(B,) int input frames -> (B,) int output frames: (lengths - 1) // 2 + 1."""
        return output_length(lengths)

    def construct(self, x, lengths):
        output_lengths = self.get_seq_lens(lengths)
        if self.fixed_normalisation:
            x = self.normalise_input(x, lengths)
        x = self.conv(x, output_lengths)
        b, c, f, t = x.shape
        x = x.view(b, c * f, t).transpose(2, 0, 1)  # (T', B, 32 * F'')
        x = self.RNN(x, output_lengths)
        if not self.bidirectional:
            x = self.lookahead(x)
        return self.fc(x), output_lengths
