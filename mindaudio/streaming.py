"""Streaming recognition with a unidirectional DeepSpeech2: audio in chunks of any length, the
partial transcript after each, the final one at the end; batch 1.

The model must be the streaming variant (`ModelConfig.bidirectional: False`, forward LSTMs and a
lookahead convolution) with fixed feature statistics (`SpectConfig.normalisation: fixed`): a
backward LSTM or a per-recording mean needs the whole recording before the first output.

Every stage keeps what it needs between chunks and computes each frame once:
- STFT: the samples of frames not yet complete (frames are centred: frame i covers samples
  [i*hop - n_fft/2, i*hop + n_fft/2); the left padding is known from the first samples, the right
  padding only at `finish()`), and the last n_fft/2 + 1 samples for the right reflection;
- each convolution: its input frames still inside a future output's receptive field (kernel 11
  in time, padding 5: an output waits for 5 future input frames; the first strides by 2);
- the LSTMs: h and c of every layer;
- the lookahead: the LSTM outputs of the `lookahead_context` frames it still waits for.
Stages run in eval mode (BatchNorm with its moving statistics is per frame), with the model's own
parameters: convolutions, BatchNorm and the classifier through MindSpore primitives called one by
one (no graph compiled per chunk shape), the LSTM steps and the lookahead in float32 numpy. The
streamed logits equal the model's offline forward on the whole recording to float32 rounding
(tests/test_streaming.py checks 1e-5 on real speech for several chunkings).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

import mindspore as ms
from mindspore import ops

from mindaudio.checkpoint import load_model_weights
from mindaudio.config import Config, SpectConfig, UserError
from mindaudio.data.features import (fft_size, frames_magnitude, frequency_bands, hop_size, log_of_magnitude, num_frames,
                                     num_freq_bins, padding_mode)
from mindaudio.decoding.greedy import greedy_ids
from mindaudio.decoding.hypothesis import log_softmax, normalise_spaces
from mindaudio.decoding.select import build_decoder
from mindaudio.data.text import CharTokenizer
from mindaudio.models.build import build_model
from mindaudio.models.deepspeech2 import CONV_GEOMETRY, DeepSpeechModel, conv_output_size

_TIME = 1


class StreamingError(UserError):
    """A model or input the streaming recogniser cannot work with; the message says why."""


def check_streamable(model: DeepSpeechModel, source: str = "the model") -> None:
    """StreamingError unless `model` is unidirectional with fixed feature normalisation."""
    if model.bidirectional:
        raise StreamingError(f"{source} is bidirectional: its backward LSTMs need the whole recording "
                             f"before the first output; streaming needs a model trained with "
                             f"ModelConfig.bidirectional: False (e.g. configs/digits_streaming.yaml)")
    if not model.fixed_normalisation:
        raise StreamingError(f"{source} normalises each recording by its own mean and std, known only at "
                             f"its end; streaming needs SpectConfig.normalisation: fixed")


def lookahead_frames(model: DeepSpeechModel) -> int:
    """Input feature frames an output frame waits for beyond its own centre frame: the lookahead's
    output frames traced back through the convolutions (their right context and strides)."""
    frames = model.lookahead_context
    for conv in reversed(CONV_GEOMETRY):
        kernel, stride, padding = conv.kernel[_TIME], conv.stride[_TIME], conv.padding[_TIME]
        frames = frames * stride + (kernel - 1 - padding)
    return frames


def algorithmic_latency_seconds(model: DeepSpeechModel, spect: SpectConfig) -> float:
    """Audio after an output frame's centre needed before that frame can be computed: the future
    feature frames (`lookahead_frames`) times the hop, plus the half window the last one reaches
    beyond its centre. A chunk's own length adds to it (its first sample waits for its last)."""
    samples = lookahead_frames(model) * hop_size(spect) + fft_size(spect) // 2
    return samples / spect.sample_rate


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _TimeBuffer:
    """Frames [start, end) of one stage's output, time on the last axis; frames before 0 read as
    zeros, and so do frames past the end once the stream is finished."""

    def __init__(self, leading_shape):
        self.data = np.zeros(tuple(leading_shape) + (0,), np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + self.data.shape[-1]

    def append(self, frames: np.ndarray) -> None:
        self.data = np.concatenate([self.data, frames.astype(np.float32, copy=False)], axis=-1)

    def window(self, first: int, last: int) -> np.ndarray:
        """Frames [first, last), zeros outside [0, end)."""
        out = np.zeros(self.data.shape[:-1] + (last - first,), np.float32)
        low, high = max(first, 0), min(last, self.end)
        if high > low:
            if low < self.start:
                raise RuntimeError(f"frame {low} was dropped (buffer starts at {self.start})")
            out[..., low - first:high - first] = self.data[..., low - self.start:high - self.start]
        return out

    def drop_before(self, index: int) -> None:
        cut = min(max(index - self.start, 0), self.data.shape[-1])
        if cut:
            self.data = self.data[..., cut:]
            self.start += cut


class StreamingRecogniser:
    """Chunk-by-chunk DeepSpeech2 recognition at batch 1.

    model: a unidirectional DeepSpeechModel with fixed normalisation (`check_streamable`);
    spect: its SpectConfig; blank_id: the CTC blank (default: the last label);
    decoder: for `finish()`'s transcript (anything with decode(log_probs) -> Hypothesis; default:
    greedy, the same collapse the partial transcripts use).

    feed(samples) takes float samples in [-1, 1] at spect.sample_rate, any number of them (0 too),
    and returns the partial transcript of the output frames complete so far; finish() flushes the
    right edge and returns the final transcript. `log_probs` holds the (frames, classes)
    log-probabilities emitted so far. reset() starts a new recording.
    """

    def __init__(self, model: DeepSpeechModel, spect: SpectConfig, blank_id: Optional[int] = None,
                 decoder=None):
        check_streamable(model)
        model.set_train(False)
        self.model = model
        self.spect = spect
        self.labels = list(model.labels)
        self.blank_id = len(self.labels) - 1 if blank_id is None else int(blank_id)
        self.decoder = decoder
        self.n_fft, self.hop = fft_size(spect), hop_size(spect)
        self.pad = self.n_fft // 2
        self.window_pad_mode = padding_mode(spect)
        self.mean = model.feature_mean.asnumpy().reshape(-1, 1)
        self.std = model.feature_std.asnumpy().reshape(-1, 1)
        self._prepare_layers()
        self.reset()

    def _prepare_layers(self) -> None:
        model = self.model
        self.convs = []
        for geometry, conv, bn in zip(CONV_GEOMETRY, (model.conv.conv1, model.conv.conv2),
                                      (model.conv.bn1, model.conv.bn2)):
            pad_f = geometry.padding[0]
            # Time padding 0: the stream supplies the time context (zeros before the start and
            # past the end, exactly the offline padding).
            primitive = ops.Conv2D(out_channel=geometry.out_channels, kernel_size=geometry.kernel, mode=1,
                                   pad_mode="pad", pad=(pad_f, pad_f, 0, 0), stride=geometry.stride)
            self.convs.append((geometry, primitive, conv.weight, bn))
        # Per layer: W_ih^T (D, 4H), W_hh^T (H, 4H), b_ih + b_hh (4H,), float32, gates in
        # nn.LSTM's order (input, forget, cell, output). The steps run in numpy: MindSpore's fused
        # LSTM kernel costs ~80-300 ms per call on this CPU whatever the number of steps (it
        # re-packs the weights), far more than a chunk's few steps.
        self.lstm_layers = []
        for layer in model.RNN.lstms:
            w_ih, w_hh = layer.w_ih_list[0].asnumpy(), layer.w_hh_list[0].asnumpy()
            bias = (layer.b_ih_list[0] + layer.b_hh_list[0]).asnumpy()
            self.lstm_layers.append((np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bias,
                                     layer.hidden_size))
        self.lookahead_weight = model.lookahead.weight.asnumpy()
        self.context = model.lookahead_context
        self.fc = model.fc.module

    def reset(self) -> None:
        """Forget the current recording."""
        self.samples_received = 0
        self._head = np.zeros(0, np.float32)  # samples before the left padding can be built
        self._padded: Optional[_TimeBuffer] = None  # the centred (padded) signal
        self._frames_done = 0
        self._features = _TimeBuffer((1, num_freq_bins(self.spect)))
        self._conv_outputs = []
        self._lstm = _TimeBuffer((self.model.hidden_size,))
        self._lookahead_done = 0
        self._state = [(np.zeros(h, np.float32), np.zeros(h, np.float32)) for *_, h in self.lstm_layers]
        self._log_probs: List[np.ndarray] = []
        self._best: List[int] = []
        self.finished = False
        self._conv_outputs = [None] * len(self.convs)

    # ---- public API -------------------------------------------------------------------------

    @property
    def log_probs(self) -> np.ndarray:
        """(frames emitted so far, classes) float32 log-probabilities."""
        if not self._log_probs:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.concatenate(self._log_probs)

    @property
    def frames_emitted(self) -> int:
        return len(self._best)

    def partial_text(self) -> str:
        """Greedy transcript of the frames emitted so far."""
        return normalise_spaces("".join(self.labels[i] for i in greedy_ids(np.array(self._best), self.blank_id)))

    def feed(self, samples) -> str:
        """Add samples ((n,) float at spect.sample_rate) and return the partial transcript."""
        if self.finished:
            raise StreamingError("the stream is finished; call reset() to start a new recording")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            bad = self.samples_received + int(np.argwhere(~np.isfinite(samples))[0][0])
            raise StreamingError(f"non-finite sample (NaN or inf) at {bad / self.spect.sample_rate:.3f} s")
        self.samples_received += samples.size
        self._add_samples(samples)
        self._run(final=False)
        return self.partial_text()

    def finish(self) -> str:
        """Flush the end of the recording; the final transcript (`decoder`'s, or greedy)."""
        if not self.finished:
            if self.samples_received <= self.pad:
                raise StreamingError(f"only {self.samples_received} samples at {self.spect.sample_rate} Hz: "
                                     f"too short for one feature frame")
            self._add_right_padding()
            self._run(final=True)
            self.finished = True
        if self.decoder is not None:
            return self.decoder.decode(self.log_probs).text
        return self.partial_text()

    # ---- stages ------------------------------------------------------------------------------

    def _add_samples(self, samples: np.ndarray) -> None:
        if self._padded is None:
            self._head = np.concatenate([self._head, samples])
            if self._head.size <= self.pad:
                return  # a reflected left edge needs n_fft/2 + 1 samples
            self._padded = _TimeBuffer(())
            self._padded.append(np.pad(self._head, (self.pad, 0), mode=self.window_pad_mode))
            self._head = np.zeros(0, np.float32)
        else:
            self._padded.append(samples)

    def _add_right_padding(self) -> None:
        tail = self._padded.data[-(self.pad + 1):]  # the last n_fft/2 + 1 samples of the signal
        self._padded.append(np.pad(tail, (0, self.pad), mode=self.window_pad_mode)[self.pad + 1:])

    def _run(self, final: bool) -> None:
        if self._padded is None:
            return
        total_frames = num_frames(self.samples_received, self.spect) if final else None
        self._stft(total_frames)
        if self._features.end == 0:
            return
        inputs, total = self._features, total_frames
        for index in range(len(self.convs)):
            if not self._conv(index, inputs, total):
                if not final:
                    return
            inputs = self._conv_outputs[index]
            geometry = self.convs[index][0]
            if total is not None:
                total = conv_output_size(total, geometry.kernel[_TIME], geometry.stride[_TIME],
                                         geometry.padding[_TIME])
        self._lstm_stage(inputs)
        self._lookahead_stage(total)

    def _stft(self, total_frames: Optional[int]) -> None:
        padded = self._padded
        if total_frames is None:
            ready = max(0, (padded.end - self.n_fft) // self.hop + 1)
        else:
            ready = total_frames
        if ready > self._frames_done:
            first, last = self._frames_done, ready
            span = padded.window(first * self.hop, (last - 1) * self.hop + self.n_fft)
            frames = np.lib.stride_tricks.sliding_window_view(span, self.n_fft)[::self.hop][:last - first]
            bands = frequency_bands(frames_magnitude(frames, self.spect), self.spect)
            log_magnitude = log_of_magnitude(bands, self.spect)
            normalised = (log_magnitude - self.mean) / self.std
            self._features.append(normalised[None])
            self._frames_done = last
        # Keep the next frame's samples and the last n_fft/2 + 1 for the right reflection.
        padded.drop_before(min(self._frames_done * self.hop, padded.end - (self.pad + 1)))

    def _conv(self, index: int, inputs: _TimeBuffer, total_in: Optional[int]) -> int:
        """Run convolution block `index` on every output frame its input now determines."""
        geometry, primitive, weight, bn = self.convs[index]
        kernel, stride, padding = geometry.kernel[_TIME], geometry.stride[_TIME], geometry.padding[_TIME]
        if self._conv_outputs[index] is None:
            freq = inputs.data.shape[1]
            out_freq = conv_output_size(freq, geometry.kernel[0], geometry.stride[0], geometry.padding[0])
            self._conv_outputs[index] = _TimeBuffer((geometry.out_channels, out_freq))
        outputs = self._conv_outputs[index]
        first = outputs.end
        if total_in is None:
            last = max(first, (inputs.end - kernel + padding) // stride + 1)
        else:
            last = conv_output_size(total_in, kernel, stride, padding)
        if last <= first:
            return 0
        x = inputs.window(stride * first - padding, stride * (last - 1) - padding + kernel)
        y = primitive(ms.Tensor(x[None]), weight)
        y = bn.bn_infer(y, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)[0]
        outputs.append(ops.tanh(y).asnumpy()[0])
        inputs.drop_before(stride * last - padding)
        return last - first

    def _lstm_stage(self, conv_out: _TimeBuffer) -> None:
        if conv_out.end == conv_out.start:
            return
        channels, freq, steps = conv_out.data.shape
        x = np.ascontiguousarray(conv_out.data.reshape(channels * freq, steps).T)  # (T, 32 * F'')
        conv_out.drop_before(conv_out.end)
        for index, (w_ih_t, w_hh_t, bias, hidden) in enumerate(self.lstm_layers):
            h, c = self._state[index]
            gates_in = x @ w_ih_t + bias  # every step's input projection at once
            out = np.empty((steps, hidden), np.float32)
            for step in range(steps):
                gates = gates_in[step] + h @ w_hh_t
                i, f, g, o = _sigmoid(gates[:hidden]), _sigmoid(gates[hidden:2 * hidden]), \
                    np.tanh(gates[2 * hidden:3 * hidden]), _sigmoid(gates[3 * hidden:])
                c = f * c + i * g
                h = o * np.tanh(c)
                out[step] = h
            self._state[index] = (h, c)
            x = out
        self._lstm.append(x.T)

    def _lookahead_stage(self, total: Optional[int]) -> None:
        first = self._lookahead_done
        last = self._lstm.end - self.context if total is None else total
        if last <= first:
            return
        m = last - first
        window = self._lstm.window(first, last + self.context).T  # (m + context, H)
        weight = self.lookahead_weight
        # The same products and order of additions as models.deepspeech2.Lookahead.
        out = window[:m] * weight[0]
        for j in range(1, self.context + 1):
            out = out + window[j:j + m] * weight[j]
        logits = self.fc.matmul(ms.Tensor(out), self.fc.weight).asnumpy()
        log_probs = log_softmax(logits)
        self._log_probs.append(log_probs)
        self._best.extend(int(i) for i in log_probs.argmax(axis=-1))
        self._lookahead_done = last
        self._lstm.drop_before(last)


def is_streamable(config: Config) -> bool:
    """Whether `config` describes a model the streaming recogniser can run (see below)."""
    try:
        check_streamable_config(config)
    except StreamingError:
        return False
    return True


def check_streamable_config(config: Config) -> None:
    """StreamingError naming the yaml and key when `config` describes a model that cannot stream
    (checked before any model is built)."""
    if config.ModelConfig.bidirectional:
        raise StreamingError(f"{config.source}: ModelConfig.bidirectional is True: the backward LSTMs need the "
                             f"whole recording before the first output; streaming needs a model trained "
                             f"with bidirectional: False (e.g. configs/digits_streaming.yaml)")
    if config.SpectConfig.normalisation != "fixed":
        raise StreamingError(f"{config.source}: SpectConfig.normalisation is {config.SpectConfig.normalisation!r}: "
                             f"each recording's own mean and std are known only at its end; streaming "
                             f"needs normalisation: fixed")


def build_streaming_recogniser(config: Config, checkpoint: str, decoder=None) -> StreamingRecogniser:
    """The unidirectional model of `config` with `checkpoint`'s weights (feature statistics
    included) and the decoder `config.EvalConfig` asks for (used by `finish()`)."""
    check_streamable_config(config)
    model = build_model(config)
    load_model_weights(model, checkpoint)
    decoder = decoder if decoder is not None else build_decoder(config)
    return StreamingRecogniser(model, config.SpectConfig, CharTokenizer.from_config(config).blank_id, decoder)
