"""The benchmarks themselves; each runs in its own process (see run.py) and returns a dict.

Timing rules: a graph is compiled on the first call with a new input shape. Every new shape is
first compiled explicitly (`Cell.compile`, timed: the compile time), then run and timed; a run
ends with `.asnumpy()` so the device work is finished. The first run after a compile also
allocates the graph's memory and prepares the kernels: it is run untimed (warm-up) before the
timed runs.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops

from mindaudio.config import Config, load_config
from mindaudio.data.audio import load_audio
from mindaudio.data.digits import prepare_digits
from mindaudio.data.dataset import Batch, PaddedBatchSource, build_dataset, load_split, make_sampler
from mindaudio.data.features import hop_size, log_spectrogram
from mindaudio.models.deepspeech2 import output_length
from mindaudio.data.text import CharTokenizer
from mindaudio.decoding.greedy import GreedyDecoder
from mindaudio.inference import padded_length
from mindaudio.models.build import build_model
from mindaudio.training.train_step import build_update

from bench import workloads
from bench.flops import forward_flops_per_second, train_flops_per_second
from bench.process_memory import peak_rss_mb

DIGITS_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"

# The original's scheme: every training batch padded to 1250 frames (longer clips cropped),
# every evaluation batch to 3500 frames, LSTM unmasked.
BASELINE_TRAIN_FRAMES = 1250
BASELINE_EVAL_FRAMES = 3500


def make_config(hidden: int, layers: int, baseline: bool) -> Config:
    config = Config()
    config.ModelConfig.hidden_size = hidden
    config.ModelConfig.hidden_layers = layers
    config.ModelConfig.masked = not baseline
    config.TrainingConfig.fixed_frames = BASELINE_TRAIN_FRAMES if baseline else 0
    config.EvalConfig.fixed_frames = BASELINE_EVAL_FRAMES if baseline else 0
    return config


def quantile_batches(batches: Sequence[Batch], durations: np.ndarray, count: int) -> List[Batch]:
    """`count` batches at evenly spaced quantiles of the plan ordered by (padded frames, audio):
    a stratified sample whose mean step time estimates the epoch's."""
    keys = [(batch.frames, float(durations[list(batch.indices)].sum())) for batch in batches]
    order = sorted(range(len(batches)), key=lambda i: keys[i])
    count = min(count, len(batches))
    picks = [order[int((i + 0.5) * len(order) / count)] for i in range(count)]
    return [batches[i] for i in picks]


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _training_step(model: nn.Cell, optim, weight_decay: bool = True, dynamic_shapes: bool = False):
    """The training update of `model` exactly as the trainer builds it on one process
    (`build_update`): CTC gradients accumulated into buffers, then a clipped Adam update.

    optim: an `OptimConfig`. weight_decay=False runs Adam without weight decay (`batch_scaling`
    has always been timed so; kept so its results stay comparable); dynamic_shapes as
    `RuntimeConfig.dynamic_shapes` (one graph for every input shape). Returns (update, step):
    `step(features, lengths, labels, label_lengths)` runs one whole update from that one batch
    and waits for it; `update.accumulate` / `update.apply` are the cells to compile.
    """
    if not weight_decay:
        optim = dataclasses.replace(optim, weight_decay=0.0)
    update = build_update(model, optim, dynamic_shapes=dynamic_shapes)

    def step(*data):
        update.add_micro_batch(*data)
        update.finish()

    return update, step


def _shape_timings(batches_data, run_step, compile_step, repeats: int) -> Dict:
    """Per new input shape the time of `compile_step(data)`; per batch the median of `repeats`
    timed `run_step(data)` calls."""
    compile_by_shape, steady = {}, []
    for data in batches_data:
        shape = tuple(data[0].shape)
        if shape not in compile_by_shape:
            compile_by_shape[shape] = _timed(lambda: compile_step(data))
        times = [_timed(lambda: run_step(data)) for _ in range(repeats)]
        steady.append(float(np.median(times)))
    return {"steady": steady, "compile_by_shape": compile_by_shape}


def _batch_arrays(split, spect, batches, blank_id):
    """Build each batch with the project's own batch source; returns (arrays, seconds per batch)."""
    source = PaddedBatchSource(split, spect, batches, blank_id)
    arrays, seconds = [], []
    for item in range(len(batches)):
        start = time.process_time()
        arrays.append(source[item])
        seconds.append(time.process_time() - start)
    return arrays, seconds


def _audio_seconds(split, batches, seconds_cap: float) -> float:
    """Audio actually fed to the model: each utterance's duration, capped by its batch's crop."""
    durations = split.durations
    return float(sum(min(durations[i], seconds_cap) for batch in batches for i in batch.indices))


def _plan(split, batch_size: int, train: bool, strata: int, batch_frames: int = 0):
    plan = (make_sampler(split, batch_size, train=True, batch_frames=batch_frames, seed=1).batches(epoch=1) if train
            else make_sampler(split, batch_size, train=False).batches(0))
    return plan, quantile_batches(plan, split.durations, strata)


def _sample_records(split, spect, chosen, blank_id, cap, run_step, compile_step, make_inputs,
                    repeats: int) -> List[Dict]:
    """Build, compile and time each chosen batch: one record per batch."""
    workloads.materialize([split.utterances[i] for b in chosen for i in b.indices],
                          workloads.speech_signal())
    arrays, data_seconds = _batch_arrays(split, spect, chosen, blank_id)
    records = []
    for batch, arr, data_s in zip(chosen, arrays, data_seconds):
        inputs = make_inputs(arr)
        compile_s = _timed(lambda: compile_step(inputs))
        warmup_s = _timed(lambda: run_step(inputs))
        times = [_timed(lambda: run_step(inputs)) for _ in range(repeats)]
        step_s = float(np.median(times)) if times else float("nan")  # repeats 0: a memory probe only
        records.append({"frames": batch.frames, "utterances": len(batch.indices),
                        "padded_frames": batch.frames * len(batch.indices),
                        "audio_s": _audio_seconds(split, [batch], cap), "step_s": step_s,
                        "warmup_s": warmup_s, "runs_s": times,
                        "compile_s": compile_s, "data_cpu_s": data_s})
    return records


def _plan_stats(split, plan, cap, seconds_per_frame) -> Dict:
    epoch_audio = _audio_seconds(split, plan, cap)
    padded = sum(batch.frames * len(batch.indices) for batch in plan) * seconds_per_frame
    return {"utterances": len(split.utterances), "batches": len(plan), "epoch_audio_s": epoch_audio,
            "cropped_s": round(max(0.0, float(split.durations.sum()) - epoch_audio), 3),
            "padded_over_audio": padded / epoch_audio, "shapes_in_epoch": len({b.frames for b in plan}),
            "plan_padded_frames": sum(batch.frames * len(batch.indices) for batch in plan)}


def train_throughput(hidden: int, layers: int, batch_size: int, baseline: bool, strata: int,
                     repeats: int, max_utterances: int, pick: int = -1, batch_frames: int = 0,
                     dynamic_shapes: bool = False, largest_first: bool = False) -> Dict:
    """Training step times for a stratified sample of a real epoch plan on the train-clean-5
    length mix (all sampled batches, or only sample `pick`: MindSpore keeps every compiled
    shape's memory, so each full-model shape gets its own process); batches of `batch_size`
    utterances, or sized per bucket by a budget of `batch_frames` padded frames when > 0.
    dynamic_shapes: one graph for every shape (`RuntimeConfig.dynamic_shapes`). largest_first:
    before the sample, compile and run the plan's batch with the most padded frames once (the
    one that needs the most memory; its record is `largest`, outside the sample), so the
    process's peak RSS is the whole epoch's (with strata 0, that batch and no sample). Summarised
    by bench.summary.summarize_throughput."""
    config = make_config(hidden, layers, baseline)
    spect, train = config.SpectConfig, config.TrainingConfig
    tokenizer = CharTokenizer.from_config(config)
    seconds_per_frame = hop_size(spect) / spect.sample_rate
    cap = train.fixed_frames * seconds_per_frame if train.fixed_frames else float("inf")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(train.seed)
    model = build_model(config, seed=train.seed)
    update, train_step = _training_step(model, config.OptimConfig, dynamic_shapes=dynamic_shapes)
    optimizer_compile = _timed(lambda: update.apply.compile(Tensor(1.0, ms.float32)))

    def step(data):
        train_step(*data)

    def sample(batches, repeats):
        return _sample_records(split, spect, batches, tokenizer.blank_id, cap, step,
                               lambda data: update.accumulate.compile(*data),
                               lambda arr: tuple(Tensor(a) for a in arr[:4]), repeats)

    with tempfile.TemporaryDirectory(prefix="ds2bench_") as tmp:
        manifest = workloads.write_length_mix(Path(tmp), "train-clean-5", max_utterances)
        split = load_split(manifest, tokenizer, spect, bucket_boundaries=train.bucket_boundaries,
                           max_duration=train.max_duration, output_frames=output_length,
                           fixed_frames=train.fixed_frames)
        plan, chosen = _plan(split, batch_size, True, strata, batch_frames)
        if pick >= 0:
            chosen = chosen[pick:pick + 1]
        largest = (sample([max(plan, key=lambda b: (b.frames * len(b.indices), b.frames))], 0)[0]
                   if largest_first else None)
        records = sample(chosen, repeats)
    result = _plan_stats(split, plan, cap, seconds_per_frame)
    result.update(batch_size=batch_size, batch_frames=batch_frames, dynamic_shapes=dynamic_shapes,
                  largest=largest, samples=records,
                  optimizer_compile_s=optimizer_compile,
                  flops_per_audio_s=train_flops_per_second(hidden, layers, len(config.labels), spect),
                  peak_rss_mb=peak_rss_mb())
    return result


def eval_throughput(hidden: int, layers: int, batch_size: int, baseline: bool, strata: int,
                    repeats: int, max_utterances: int, pick: int = -1) -> Dict:
    """Evaluation (forward + greedy decoding) times for a stratified sample of the test-clean
    mix's evaluation plan; as `train_throughput`."""
    config = make_config(hidden, layers, baseline)
    spect = config.SpectConfig
    tokenizer = CharTokenizer.from_config(config)
    seconds_per_frame = hop_size(spect) / spect.sample_rate
    frames = config.EvalConfig.fixed_frames
    cap = frames * seconds_per_frame if frames else float("inf")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = build_model(config, seed=1)
    model.set_train(False)
    decoder = GreedyDecoder(config.labels, tokenizer.blank_id)

    def forward(data):
        logits, lengths = model(*data)
        decoder.decode_batch(logits.asnumpy(), lengths.asnumpy())

    with tempfile.TemporaryDirectory(prefix="ds2bench_") as tmp:
        manifest = workloads.write_length_mix(Path(tmp), "test-clean", max_utterances)
        split = load_split(manifest, tokenizer, spect,
                           bucket_boundaries=config.TrainingConfig.bucket_boundaries,
                           fixed_frames=config.EvalConfig.fixed_frames)
        plan, chosen = _plan(split, batch_size, False, strata)
        if pick >= 0:
            chosen = chosen[pick:pick + 1]
        records = _sample_records(split, spect, chosen, tokenizer.blank_id, cap, forward,
                                  lambda data: model.compile(*data),
                                  lambda arr: (Tensor(arr[0]), Tensor(arr[1])), repeats)
    result = _plan_stats(split, plan, cap, seconds_per_frame)
    result.update(batch_size=batch_size, samples=records, optimizer_compile_s=0.0,
                  flops_per_audio_s=forward_flops_per_second(hidden, layers, len(config.labels), spect)["total"],
                  peak_rss_mb=peak_rss_mb())
    return result


def transcription_rtf(hidden: int, layers: int, baseline: bool, utterances: int, repeats: int) -> Dict:
    """Real-time factor of transcribing one file at a time: read, features, pad (as transcribe.py
    does, `mindaudio.inference.padded_length`, or to 3500 frames for the baseline), model, greedy
    decode. Compile excluded."""
    config = make_config(hidden, layers, baseline)
    spect = config.SpectConfig
    tokenizer = CharTokenizer.from_config(config)
    paths = sorted((workloads.LIBRISPEECH_MINI / "test-clean").rglob("*.flac"))[:utterances]
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = build_model(config, seed=1)
    model.set_train(False)
    decoder = GreedyDecoder(config.labels, tokenizer.blank_id)

    def transcribe(path, compile_only: bool = False) -> float:
        signal = load_audio(path, spect.sample_rate)
        features = log_spectrogram(signal, spect)
        seconds = signal.size / spect.sample_rate
        frames = config.EvalConfig.fixed_frames or padded_length(features.shape[1])
        padded = np.zeros((1, 1, features.shape[0], frames), np.float32)
        length = min(features.shape[1], frames)
        padded[0, 0, :, :length] = features[:, :length]
        inputs = (Tensor(padded), Tensor(np.array([length], np.int32)))
        if compile_only:
            model.compile(*inputs)
            return seconds
        logits, lengths = model(*inputs)
        decoder.decode_batch(logits.asnumpy(), lengths.asnumpy())
        return seconds

    audio, wall, compile_s = 0.0, 0.0, []
    for path in paths:
        start = time.perf_counter()
        audio += transcribe(path, compile_only=True)
        compile_s.append(time.perf_counter() - start)
        transcribe(path)  # warm-up: the first run after a compile allocates the graph's memory
        times = [_timed(lambda: transcribe(path)) for _ in range(repeats)]
        wall += float(np.median(times))
    return {"utterances": len(paths), "audio_s": audio, "rtf": wall / audio,
            "compile_s": float(np.mean(compile_s)), "peak_rss_mb": peak_rss_mb()}


def librosa_log_spectrogram(signal: np.ndarray, spect) -> np.ndarray:
    """The original-compat features computed with librosa: periodic Hann STFT, centred with
    zero padding (as the original's stft), log1p magnitude, one mean/std over the spectrogram."""
    import librosa

    n_fft = int(spect.sample_rate * spect.window_size)
    hop = int(spect.sample_rate * spect.window_stride)
    magnitude = np.abs(librosa.stft(signal, n_fft=n_fft, hop_length=hop, win_length=n_fft,
                                    window="hann", center=True, pad_mode="constant"))
    log_magnitude = np.log1p(magnitude)
    return (log_magnitude - log_magnitude.mean()) / log_magnitude.std()


def feature_speed(seconds: float, repeats: int) -> Dict:
    """Feature extraction in x real time per core (CPU seconds, one thread): ours vs librosa on
    the same real speech, plus reading the WAV file; and the largest difference between them."""
    import soundfile

    spect = Config().SpectConfig
    signal = workloads.speech_clip(workloads.speech_signal(), seconds, 0)
    ours = log_spectrogram(signal, spect)
    reference = librosa_log_spectrogram(signal, spect)
    result = {"audio_s": seconds, "max_abs_diff": float(np.abs(ours - reference).max())}

    def cpu_rate(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        return seconds / best

    result["ours_x_realtime"] = cpu_rate(lambda: log_spectrogram(signal, spect))
    result["librosa_x_realtime"] = cpu_rate(lambda: librosa_log_spectrogram(signal, spect))
    with tempfile.TemporaryDirectory(prefix="ds2bench_") as tmp:
        wav = Path(tmp) / "speech.wav"
        soundfile.write(wav, signal, spect.sample_rate, subtype="PCM_16")
        result["read_and_ours_x_realtime"] = cpu_rate(
            lambda: log_spectrogram(load_audio(wav, spect.sample_rate), spect))
    return result


def matmul_rate(size: int, repeats: int) -> Dict:
    """fp32 matrix-product GFLOP/s of this machine (all cores): MindSpore's MatMul (what the
    model's Dense layers use) and numpy's BLAS, on size x size x size; and MindSpore's fused LSTM
    kernel (its own matrix products) at the full model's per-layer shape."""
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size ** 3

    def best_rate(fn) -> float:
        fn()
        return flops / min(_timed(fn) for _ in range(repeats)) / 1e9

    ta, tb = Tensor(a), Tensor(b)
    matmul = ops.MatMul()
    ms_rate = best_rate(lambda: matmul(ta, tb).asnumpy())
    np_rate = best_rate(lambda: a @ b)
    return {"size": size, "mindspore_gflops": ms_rate, "numpy_gflops": np_rate,
            "limit_gflops": max(ms_rate, np_rate)}


def digits_compile_share(strata_repeats: int, hidden: int = 0, layers: int = 0) -> Dict:
    """Share of graph compilation in one epoch of the digits recipe as configs/digits.yaml sets it
    (model, batch sizes, length buckets, features), on the shipped corpus split as
    `mindaudio/data/digits.py` splits it: every training and validation shape is compiled and
    timed; the epoch is every planned batch at its shape's steady time plus the compiles.
    hidden/layers > 0 replace the recipe's model size (the quick check). Augmentation is off, so
    the shapes are those of an unperturbed epoch."""
    config = load_config(str(DIGITS_RECIPE))
    if hidden > 0:
        config.ModelConfig.hidden_size, config.ModelConfig.hidden_layers = hidden, layers
    spect, train = config.SpectConfig, config.TrainingConfig
    batch_size, eval_batch_size = train.batch_size, config.EvalConfig.batch_size
    tokenizer = CharTokenizer.from_config(config)
    with tempfile.TemporaryDirectory(prefix="ds2bench_") as tmp:
        manifests = {split.split: split.manifest for split in prepare_digits(Path(tmp), verbose=False).splits}
        train_split = load_split(manifests["train"], tokenizer, spect, bucket_boundaries=train.bucket_boundaries,
                                 max_duration=train.max_duration, output_frames=output_length)
        val_split = load_split(manifests["val"], tokenizer, spect, bucket_boundaries=train.bucket_boundaries)
    train_plan = make_sampler(train_split, batch_size, train=True, seed=train.seed).batches(epoch=1)
    val_plan = make_sampler(val_split, eval_batch_size, train=False).batches(0)

    def one_per_shape(split, plan):
        """One batch of each distinct (batch size, frames) of `plan`, in order of first use, and
        how many batches of the plan have each: a bucket's last, smaller batch is a graph of its own."""
        reps, counts = {}, {}
        for batch in plan:
            shape = (len(batch.indices), batch.frames)
            counts[shape] = counts.get(shape, 0) + 1
            reps.setdefault(shape, batch)
        source = PaddedBatchSource(split, spect, list(reps.values()), tokenizer.blank_id)
        return [source[i] for i in range(len(reps))], list(reps), counts

    train_arrays, train_shapes, train_counts = one_per_shape(train_split, train_plan)
    val_arrays, val_shapes, val_counts = one_per_shape(val_split, val_plan)
    data_start = time.perf_counter()
    data_batches = sum(1 for _ in build_dataset(train_split, spect, train_plan, tokenizer.blank_id,
                                                train.num_workers).create_tuple_iterator(num_epochs=1))
    data_wall = time.perf_counter() - data_start

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = build_model(config, seed=1)
    update, train_step = _training_step(model, config.OptimConfig)

    def step(data):
        train_step(*data)

    def compile_step(data):
        update.accumulate.compile(*data)

    def forward(data):
        logits, _ = model(*data)
        logits.asnumpy()

    compile_optimizer = _timed(lambda: update.apply.compile(Tensor(1.0, ms.float32)))
    train_timing = _shape_timings([tuple(Tensor(a) for a in arr[:4]) for arr in train_arrays], step,
                                  compile_step, strata_repeats)
    model.set_train(False)
    val_timing = _shape_timings([(Tensor(arr[0]), Tensor(arr[1])) for arr in val_arrays], forward,
                                lambda data: model.compile(*data), strata_repeats)
    run_train = sum(train_counts[shape] * t for shape, t in zip(train_shapes, train_timing["steady"]))
    run_val = sum(val_counts[shape] * t for shape, t in zip(val_shapes, val_timing["steady"]))
    compile_train = sum(train_timing["compile_by_shape"].values()) + compile_optimizer
    compile_val = sum(val_timing["compile_by_shape"].values())
    compile_all = compile_train + compile_val
    epoch = run_train + run_val + compile_all
    return {"train_batches": len(train_plan), "val_batches": len(val_plan),
            "train_shapes": len(train_counts), "val_shapes": len(val_counts),
            "train_steps_s": run_train, "val_s": run_val, "compile_train_s": compile_train,
            "compile_val_s": compile_val, "epoch_s": epoch,
            "compile_share": compile_all / epoch, "epochs": train.epochs,
            "run_compile_share": compile_all / (compile_all + train.epochs * (run_train + run_val)),
            "data_pipeline_epoch_wall_s": data_wall, "data_batches": data_batches,
            "peak_rss_mb": peak_rss_mb()}


class _SumOf(nn.Cell):
    """Scalar <cell(*inputs)[0], weight>: a loss whose gradients reach every part of `cell`."""

    def __init__(self, cell: nn.Cell, weight: np.ndarray, first_only: bool = False):
        super().__init__()
        self.cell = cell
        self.weight = Tensor(weight)
        self.first_only = first_only

    def construct(self, *inputs):
        out = self.cell(*inputs)
        if self.first_only:
            out = out[0]
        return (out * self.weight).sum()


class _Backward(nn.Cell):
    """Gradients of `net` for its parameters, and for its inputs unless `inputs_grad` is False
    (the first part of the model needs no gradient for the features)."""

    def __init__(self, net: nn.Cell, inputs_grad: bool = True):
        super().__init__()
        self.net = net
        self.weights = ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=inputs_grad, get_by_list=True)

    def construct(self, *inputs):
        return self.grad(self.net, self.weights)(*inputs)


class _HeadLoss(nn.Cell):
    """Classifier + batch-mean CTC from LSTM outputs: (T', B, H) -> scalar."""

    def __init__(self, model, ctc):
        super().__init__()
        self.fc = model.fc
        self.ctc = ctc

    def construct(self, x, lengths, labels, label_lengths):
        return self.ctc(self.fc(x), lengths, labels, label_lengths).mean()


def step_profile(hidden: int, layers: int, batch_size: int, frames: int, repeats: int) -> Dict:
    """Where a training step's time goes: each part of the model run alone, forward and
    forward+backward, on the shapes it sees in a step of `batch_size` x `frames` (ours, masked),
    the optimizer update alone, the whole step, and the data pipeline's CPU time for one batch
    of real speech."""
    from mindaudio.data.features import num_freq_bins
    from mindaudio.models.deepspeech2 import rnn_input_size
    from mindaudio.models.loss import CTCLoss

    config = make_config(hidden, layers, baseline=False)
    spect = config.SpectConfig
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rng = np.random.default_rng(0)
    model = build_model(config, seed=1)
    model.set_train(True)
    freq = spect.sample_rate * spect.window_size // 2 + 1
    out_frames = int(output_length(frames))
    lengths = np.full(batch_size, frames, np.int32)
    out_lengths = np.full(batch_size, out_frames, np.int32)
    x = Tensor(rng.standard_normal((batch_size, 1, int(freq), frames), dtype=np.float32))
    rnn_in = rnn_input_size(num_freq_bins(spect))
    rnn_x = Tensor(rng.standard_normal((out_frames, batch_size, rnn_in), dtype=np.float32))
    head_x = Tensor(rng.standard_normal((out_frames, batch_size, hidden), dtype=np.float32))
    label_len = out_frames // 4
    labels = Tensor(rng.integers(0, len(config.labels) - 1, (batch_size, label_len)).astype(np.int32))
    label_lengths = Tensor(np.full(batch_size, label_len, np.int32))
    t_len, t_out = Tensor(lengths), Tensor(out_lengths)

    conv_out_shape = model.conv(x, t_out).shape
    conv_loss = _SumOf(model.conv, rng.standard_normal(conv_out_shape, dtype=np.float32))
    rnn_loss = _SumOf(model.RNN, rng.standard_normal((out_frames, batch_size, hidden), dtype=np.float32))
    head_loss = _HeadLoss(model, CTCLoss())
    parts = {
        "conv": (conv_loss, (x, t_out)),
        "lstm": (rnn_loss, (rnn_x, t_out)),
        "fc+ctc": (head_loss, (head_x, t_out, labels, label_lengths)),
    }

    def steady(fn) -> float:
        fn()
        return float(np.median([_timed(fn) for _ in range(repeats)]))

    result = {"batch_size": batch_size, "frames": frames}
    for name, (net, inputs) in parts.items():
        inputs_grad = name != "conv"
        backward = _Backward(net, inputs_grad)

        def run_backward():
            grads = backward(*inputs)
            weight_grads = grads[1] if inputs_grad else grads
            return [g.asnumpy() for g in weight_grads[:1]]

        result[f"{name}_forward_s"] = steady(lambda: net(*inputs).asnumpy())
        result[f"{name}_fwd_bwd_s"] = steady(run_backward)

    update, train_step = _training_step(model, config.OptimConfig)
    one = Tensor(1.0, ms.float32)
    result["optimizer_s"] = steady(lambda: update.apply(one).asnumpy())
    result["step_s"] = steady(lambda: train_step(x, t_len, labels, label_lengths))
    result["parameters"] = int(sum(np.prod(p.shape) for p in model.trainable_params()))

    # Data: one batch of real speech of this many frames, built as training builds it.
    signal = workloads.speech_signal()
    seconds = (frames - 2) * hop_size(spect) / spect.sample_rate
    start = time.process_time()
    for b in range(batch_size):
        log_spectrogram(workloads.speech_clip(signal, seconds, b), spect)
    result["data_cpu_s"] = time.process_time() - start
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def batch_scaling(hidden: int, layers: int, frames: int, batch_sizes: Sequence[int], repeats: int) -> Dict:
    """Training step time against batch size at a fixed length (ours, random features): shows
    whether a step is bound by streaming the weights (time flat in batch) or by arithmetic."""
    config = make_config(hidden, layers, baseline=False)
    spect = config.SpectConfig
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = build_model(config, seed=1)
    update, train_step = _training_step(model, config.OptimConfig, weight_decay=False)
    rng = np.random.default_rng(0)
    freq = int(spect.sample_rate * spect.window_size) // 2 + 1
    seconds = frames * hop_size(spect) / spect.sample_rate
    flops = train_flops_per_second(hidden, layers, len(config.labels), spect)
    rows = []
    for batch in batch_sizes:
        label_len = frames // 8
        inputs = (Tensor(rng.standard_normal((batch, 1, freq, frames), dtype=np.float32)),
                  Tensor(np.full(batch, frames, np.int32)),
                  Tensor(rng.integers(0, len(config.labels) - 1, (batch, label_len)).astype(np.int32)),
                  Tensor(np.full(batch, label_len, np.int32)))
        update.accumulate.compile(*inputs)

        def step():
            train_step(*inputs)

        step()
        step_s = float(np.median([_timed(step) for _ in range(repeats)]))
        audio = batch * seconds
        rows.append({"batch_size": batch, "step_s": step_s, "audio_s_per_s": audio / step_s,
                     "gflops": flops * audio / step_s / 1e9})
    return {"frames": frames, "rows": rows, "peak_rss_mb": peak_rss_mb()}
