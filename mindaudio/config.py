"""Typed configuration: `deepspeech2.yaml` loaded into dataclasses, with types and ranges checked.

The yaml keeps the original MindAudio sections and keys. `load_config` applies overrides given as
a mapping `{"Section.key": value}`; turning a command line into that mapping is `mindaudio.cli`'s
job. Anything wrong (an unknown key, a wrong type, a value out of range, a missing file) raises one
`ConfigError` naming the key and the yaml file.

This is the bottom layer: it imports nothing else of the project. Rules owned by other code (window
names, labels, noise files, the model's frame geometry) are checked by asking their owners, from
the command-line layer (`mindaudio.cli`) or `mindaudio.data.rules`.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from mindaudio.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem, with the file and key at fault in the message."""


DEFAULT_LABELS = ["'", "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M",
                  "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z", " ", "_"]


@dataclass
class TrainingConfig:
    epochs: int = 70
    # Utterances per batch (per rank and accumulated micro-batch); unused when batch_frames > 0.
    batch_size: int = 64
    # Frame budget: 0 sizes batches by batch_size. N > 0 gives each length bucket a fixed batch
    # of floor(N / frames the bucket pads to) utterances, so short buckets carry many utterances
    # and long ones few; every bucket is filled to whole steps (each bucket one compiled shape).
    # The loss is the mean CTC loss per utterance of the step (train_step: mean over each batch,
    # then over its micro-batches), so a step of many short utterances and one of few long ones
    # weigh the same and learning_rate stays a per-step rate; fewer, larger steps per epoch than
    # batch_size when N exceeds batch_size x the typical padded frames. Per rank and micro-batch.
    batch_frames: int = 0
    train_manifest: str = "./train/libri_train_manifest.json"
    # Validation WER/CER at the end of every epoch; empty means no validation.
    val_manifest: str = ""
    seed: int = 1
    # Utterances longer than this are dropped and counted, never cropped.
    max_duration: float = 35.0
    # Upper edges (seconds) of the padding buckets; batches are padded to their bucket's edge so
    # the graph sees few shapes. `max_duration` closes the last bucket.
    bucket_boundaries: List[float] = field(
        default_factory=lambda: [2.0, 4.0, 6.0, 8.0, 10.0, 12.5, 15.0, 17.5, 20.0, 25.0, 30.0])
    # SortaGrad: the first epoch visits batches shortest first (DeepSpeech2 paper's curriculum).
    sortagrad: bool = True
    # Threads computing feature batches in parallel (worker threads of the dataset, not processes).
    num_workers: int = 2
    # Gradient accumulation over this many micro-batches before one optimizer update.
    accumulation_steps: int = 1
    # Training log (JSON lines) every this many steps.
    log_interval: int = 10
    # Compat: 0 pads each batch to its bucket; N > 0 is the original's scheme: every batch padded
    # to N frames (the original used 1250) and longer clips cropped to N at a random offset.
    fixed_frames: int = 0


@dataclass
class SpectConfig:
    sample_rate: int = 16000
    window_size: float = 0.02
    window_stride: float = 0.01
    window: str = "hamming"
    # True reproduces the original's features exactly (the published checkpoint was trained on
    # them): periodic Hann window whatever `window` says, frames centred with zero padding,
    # log1p magnitude, one mean/std over the whole spectrogram. False honours `window` and normalises each frequency bin.
    original_compat: bool = True
    # Without original_compat: "log1p" (log(1 + |X|), the original's) or "log" (log(|X| + 1e-6)):
    # with "log" a change of loudness is a constant shift that per-bin normalisation removes,
    # whereas log1p turns quiet speech nearly linear and changes its shape.
    log_magnitude: str = "log1p"
    # "utterance": mean/std of each recording (one pair in compat mode, per bin otherwise): needs
    # the whole recording. "fixed": per-bin statistics estimated once on the training manifest,
    # stored in the model (`feature_mean`, `feature_std`) and applied by it: streaming needs this.
    normalisation: str = "utterance"
    # 0: one row per FFT bin (the original's). N > 0: N triangular mel bands summing the magnitude
    # spectrum (without original_compat): coarser above ~1 kHz, where bins say more about the
    # speaker's vocal tract and microphone than about the word.
    mel_bands: int = 0


@dataclass
class AugmentationConfig:
    """Training-only augmentation (`mindaudio/data/augment.py`); evaluation never augments."""
    # Per utterance: a speed drawn from `speeds` (resampling: tempo and pitch) and a gain drawn
    # uniformly from [gain_min_db, gain_max_db].
    speed_volume_perturb: bool = False
    # SpecAugment masks on the normalised log spectrogram, inside the utterance's true length.
    spec_augment: bool = False
    # WAV/FLAC noise recordings (searched recursively); noise is on when this is set and
    # noise_prob > 0.
    noise_dir: str = ""
    # Chance that an utterance gets noise.
    noise_prob: float = 0.4
    # Noise level bounds, as in deepspeech.pytorch whose keys these are: noise RMS relative to
    # speech RMS, drawn uniformly; SNR = -20 log10(level) dB (0.5 ~ 6 dB, 0.1 = 20 dB, 0 = clean).
    noise_min: float = 0.0
    noise_max: float = 0.5
    speeds: List[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    gain_min_db: float = -6.0
    gain_max_db: float = 8.0
    # SpecAugment: number of masks and their maximum widths (frequency bins, frames); a time mask
    # is also at most time_mask_max_fraction of the utterance's frames.
    freq_masks: int = 2
    freq_mask_width: int = 27
    time_masks: int = 2
    time_mask_width: int = 40
    time_mask_max_fraction: float = 0.2
    # Vocal tract length perturbation: the magnitude spectrum of each utterance warped along the
    # frequency axis by a factor drawn uniformly from [vtlp_min, vtlp_max] (>1 moves formants up,
    # as a shorter vocal tract does), before the log and the normalisation.
    vtlp: bool = False
    vtlp_min: float = 0.9
    vtlp_max: float = 1.1


@dataclass
class ModelConfig:
    rnn_type: str = "LSTM"
    hidden_size: int = 1024
    hidden_layers: int = 5
    # False: forward-only LSTMs followed by a lookahead (row) convolution over this many future
    # output frames (DeepSpeech2 paper, section 3.5), the model `mindaudio.streaming` runs chunk
    # by chunk. True (the original's): both directions summed; lookahead_context is then unused.
    bidirectional: bool = True
    lookahead_context: int = 20
    # True: results do not depend on padding. False: the original's computation (the backward
    # LSTM reads the padding first; convolution outputs are not zeroed beyond each length).
    masked: bool = True
    # Dropout probability on the input of every LSTM layer after the first and on the last
    # layer's output (training only). 0 (the original's model) adds no operation at all.
    dropout: float = 0.0


@dataclass
class OptimConfig:
    learning_rate: float = 3e-4
    # The learning rate is divided by this at the end of every epoch.
    learning_anneal: float = 1.1
    weight_decay: float = 1e-5
    # Kept from the original's yaml; Adam has no momentum term.
    momentum: float = 0.9
    # Kept from the original's yaml, unused: Adam's epsilon is `epsilon` (the original's value, which acted on
    # gradients loss_scale times smaller there: see divide_by_loss_scale_twice).
    eps: float = 1e-9
    betas: Tuple[float, float] = (0.9, 0.999)
    # Static loss scale: needed for fp16 on Ascend, exact no-op in fp32.
    loss_scale: float = 1024.0
    epsilon: float = 1e-5
    # Global-norm gradient clipping; 0 disables it.
    max_grad_norm: float = 400.0
    # The original built Adam(loss_scale=...) on gradients that were already at their true scale,
    # so Adam divided them by the loss scale once more and saw them loss_scale times smaller: its
    # epsilon acted relatively loss_scale times larger. True reproduces that; False is plain Adam.
    divide_by_loss_scale_twice: bool = False


@dataclass
class CheckpointConfig:
    ckpt_file_name_prefix: str = "DeepSpeech"
    ckpt_path: str = "./checkpoint"
    keep_checkpoint_max: int = 10
    # Also save every this many optimizer steps (0: only at the end of each epoch).
    save_checkpoint_steps: int = 1000
    # Resume from the newest checkpoint in `ckpt_path` when there is one.
    resume: bool = True
    # Resume from this checkpoint instead of the newest one ('' = newest).
    resume_from: str = ""


@dataclass
class EvalConfig:
    batch_size: int = 128
    test_manifest: str = "./test_clean/libri_test_clean_manifest.json"
    # 'greedy' (best path) or 'beam' (CTC beam search, pyctcdecode; with an n-gram LM if lm_path).
    decoder_type: str = "greedy"
    save_output: str = "librispeech_val_output"
    # Beam search only: prefixes kept per frame.
    beam_width: int = 64
    # KenLM n-gram (ARPA or binary) in the labels' spelling; '' = no LM (scripts/build_ngram_lm.py).
    lm_path: str = ""
    # For a binary LM: a text file of its words (an ARPA's are read from it).
    lm_unigrams: str = ""
    # LM weight and per-word bonus (scripts/tune_lm.py finds good values on a validation set).
    alpha: float = 0.5
    beta: float = 1.5
    # Words to favour (no LM needed), and their bonus per character (natural log).
    hotwords: List[str] = field(default_factory=list)
    hotword_weight: float = 10.0
    # Compat: 0 pads each batch to its length bucket; N > 0 pads every batch to N frames (the
    # original used 3500) and crops longer clips to their first N frames.
    fixed_frames: int = 0


@dataclass
class RuntimeConfig:
    """Where and how MindSpore runs. The yaml section `RuntimeConfig` (optional; `Config.runtime` in
    code); the original's flags `--device_target`, `--device_id`, `--mode`, `--is_distributed` set it."""
    # 'auto': Ascend when MindSpore can use one, else GPU, else CPU (see mindaudio/runtime/device.py).
    device_target: str = "auto"
    device_id: int = 0
    # GRAPH or PYNATIVE; the original's 0 (GRAPH_MODE) and 1 (PYNATIVE_MODE) are accepted too.
    mode: str = "GRAPH"
    is_distributed: bool = False
    # Keep compiled graphs (one per input shape) on disk, so a resumed run, a second run of the
    # same recipe, a second evaluation, transcription or server and the tests load them instead of
    # compiling again (CPU, one process; see mindaudio/runtime/compile_cache.py for why a stale
    # entry is never used).
    compile_cache: bool = True
    # Where: '' = $MINDAUDIO_CACHE/compile, else ~/.cache/mindaudio/compile. Runs may share it.
    compile_cache_dir: str = ""
    # Compile the training step, and validation's forward pass, once for all input shapes (batch,
    # frames, label padding unknown) instead of once per shape. MindSpore keeps every static graph's
    # memory while the graph lives: the full model holds about 4 GB more per compiled training shape
    # (2.4 GB of it allocated by the compile whatever the shape) and 1.8-3.4 GB per validation shape
    # (batch 16), so 8 length buckets would need well over 24 GB; one dynamic graph holds one set,
    # sized by the largest shape. Results are bit-identical; the trade-off is step time (H256x2:
    # ~25% slower; full model: 0.95-1.4x depending on the shape), while no shape is compiled or
    # first-run-allocated again (bench/memory_shapes.py).
    dynamic_shapes: bool = False


@dataclass
class Config:
    TrainingConfig: TrainingConfig = field(default_factory=TrainingConfig)
    SpectConfig: SpectConfig = field(default_factory=SpectConfig)
    AugmentationConfig: AugmentationConfig = field(default_factory=AugmentationConfig)
    ModelConfig: ModelConfig = field(default_factory=ModelConfig)
    OptimConfig: OptimConfig = field(default_factory=OptimConfig)
    CheckpointConfig: CheckpointConfig = field(default_factory=CheckpointConfig)
    EvalConfig: EvalConfig = field(default_factory=EvalConfig)
    Pretrained_model: str = ""
    labels: List[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    # The original's text handling: its transcript parser dropped the apostrophe (label id 0) from
    # training targets and evaluation references alike, so the published checkpoint never learned
    # to emit it and its WER was scored without it ("DON'T" as "DONT").
    drop_apostrophes: bool = False
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # Where the yaml was read from; relative paths in it are resolved against the working directory.
    source: str = "<defaults>"


# The yaml name of a section whose `Config` attribute is named differently.
_SECTION_ATTRIBUTES = {"RuntimeConfig": "runtime"}
_ATTRIBUTE_SECTIONS = {attribute: section for section, attribute in _SECTION_ATTRIBUTES.items()}

DEVICE_TARGETS = ("auto", "CPU", "GPU", "Ascend")
# The original's `--mode` took MindSpore's integer constants: GRAPH_MODE = 0, PYNATIVE_MODE = 1.
MODES = ("GRAPH", "PYNATIVE")

_CHOICES = {
    "ModelConfig.rnn_type": ("LSTM",),
    "SpectConfig.normalisation": ("utterance", "fixed"),
    "EvalConfig.decoder_type": ("greedy", "beam"),
    "RuntimeConfig.device_target": DEVICE_TARGETS,
    "RuntimeConfig.mode": MODES,
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where the yaml is ambiguous."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        item_tps = typing.get_args(tp)
        if isinstance(value, str):
            # The original yaml writes `betas: (0.9, 0.999)`, which yaml reads as a string.
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ConfigError(f"{where}: expected a tuple like (0.9, 0.999), got {value!r}") from None
        if not isinstance(value, (list, tuple)) or len(value) != len(item_tps):
            raise ConfigError(f"{where}: expected {len(item_tps)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_tps)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # yaml 1.1 reads `3e-4` (no dot) as a string.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build_section(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(names))}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def config_from_dict(data: Dict[str, Any], source: str = "<dict>") -> Config:
    """Build and validate a `Config` from the yaml's mapping. Errors name `source` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    hints = typing.get_type_hints(Config)
    attributes = {f.name for f in dataclasses.fields(Config)} - {"source"}
    known = {_ATTRIBUTE_SECTIONS.get(name, name) for name in attributes}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    kwargs: Dict[str, Any] = {"source": source}
    try:
        for name in known:
            if name not in data:
                continue
            attribute = _SECTION_ATTRIBUTES.get(name, name)
            tp = hints[attribute]
            value = data[name]
            if tp is RuntimeConfig and isinstance(value, dict) and "mode" in value:
                value = dict(value, mode=_mode_name(value["mode"]))
            if dataclasses.is_dataclass(tp):
                kwargs[attribute] = _build_section(tp, value, name)
            else:
                kwargs[attribute] = _coerce(value if value is not None else "", tp, name)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    config = Config(**kwargs)
    validate(config)
    return config


def _mode_name(value: Any) -> Any:
    """The original's integer modes as names: 0 -> 'GRAPH', 1 -> 'PYNATIVE'; anything else as is."""
    if isinstance(value, bool):
        return value
    if value in (0, 1, "0", "1"):
        return MODES[int(value)]
    if isinstance(value, int):
        raise ConfigError(f"RuntimeConfig.mode: must be one of GRAPH (0), PYNATIVE (1), got {value}")
    return value


def _require(cond: bool, config: Config, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{config.source}: {key}: {message}")


def validate(config: Config) -> None:
    """Ranges and choices that types alone cannot express. Missing files are checked by `check_files`;
    rules owned by the data layer or the model (window names, labels, noise files, frame geometry)
    by `mindaudio.cli` through their owners."""
    t, s, m, o, c, e = (config.TrainingConfig, config.SpectConfig, config.ModelConfig,
                        config.OptimConfig, config.CheckpointConfig, config.EvalConfig)
    _require(t.epochs >= 1, config, "TrainingConfig.epochs", f"must be >= 1, got {t.epochs}")
    _require(t.batch_size >= 1, config, "TrainingConfig.batch_size", f"must be >= 1, got {t.batch_size}")
    _require(t.batch_frames >= 0, config, "TrainingConfig.batch_frames",
             f"must be >= 0 (0 sizes batches by batch_size), got {t.batch_frames}")
    _require(t.max_duration > 0, config, "TrainingConfig.max_duration", "must be > 0")
    edges = t.bucket_boundaries
    _require(all(b > 0 for b in edges) and edges == sorted(set(edges)), config,
             "TrainingConfig.bucket_boundaries", f"must be positive and strictly increasing, got {edges}")
    _require(t.num_workers >= 1, config, "TrainingConfig.num_workers", "must be >= 1")
    _require(t.accumulation_steps >= 1, config, "TrainingConfig.accumulation_steps", "must be >= 1")
    _require(t.log_interval >= 1, config, "TrainingConfig.log_interval", "must be >= 1")
    _require(s.sample_rate > 0, config, "SpectConfig.sample_rate", "must be > 0")
    _require(0 < s.window_stride <= s.window_size, config, "SpectConfig.window_stride",
             "must be > 0 and <= window_size")
    _require(s.log_magnitude in ("log1p", "log"), config, "SpectConfig.log_magnitude",
             f"must be 'log1p' or 'log', got {s.log_magnitude!r}")
    _require(s.log_magnitude == "log1p" or not s.original_compat, config, "SpectConfig.log_magnitude",
             "'log' needs SpectConfig.original_compat: False (the original's features use log1p)")
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        _require(value in choices, config, key, f"must be one of {', '.join(choices)}, got {value!r}")
    _require(config.runtime.device_id >= 0, config, "RuntimeConfig.device_id",
             f"must be >= 0, got {config.runtime.device_id}")
    _require(m.hidden_size >= 1 and m.hidden_layers >= 1, config, "ModelConfig",
             "hidden_size and hidden_layers must be >= 1")
    _require(0.0 <= m.dropout < 1.0, config, "ModelConfig.dropout",
             f"must be in [0, 1) (a probability), got {m.dropout}")
    _require(m.lookahead_context >= 0, config, "ModelConfig.lookahead_context",
             f"must be >= 0 (future output frames), got {m.lookahead_context}")
    _require(o.learning_rate > 0, config, "OptimConfig.learning_rate", "must be > 0")
    _require(o.learning_anneal >= 1.0, config, "OptimConfig.learning_anneal",
             "must be >= 1 (the rate is divided by it every epoch)")
    _require(o.loss_scale > 0, config, "OptimConfig.loss_scale", "must be > 0")
    _require(o.max_grad_norm >= 0, config, "OptimConfig.max_grad_norm", "must be >= 0 (0 disables clipping)")
    _require(c.keep_checkpoint_max >= 1, config, "CheckpointConfig.keep_checkpoint_max", "must be >= 1")
    _require(c.save_checkpoint_steps >= 0, config, "CheckpointConfig.save_checkpoint_steps", "must be >= 0")
    _require(e.batch_size >= 1, config, "EvalConfig.batch_size", "must be >= 1")
    _require(e.beam_width >= 1, config, "EvalConfig.beam_width", f"must be >= 1, got {e.beam_width}")
    _require(e.alpha >= 0, config, "EvalConfig.alpha", f"must be >= 0, got {e.alpha}")
    _require(e.hotword_weight >= 0, config, "EvalConfig.hotword_weight", f"must be >= 0, got {e.hotword_weight}")
    for key, frames in (("TrainingConfig.fixed_frames", t.fixed_frames),
                        ("EvalConfig.fixed_frames", e.fixed_frames)):
        _require(frames >= 0, config, key, f"must be >= 0 (0 = length buckets), got {frames}")
    _validate_augmentation(config)


def _validate_augmentation(config: Config) -> None:
    a, key = config.AugmentationConfig, "AugmentationConfig."
    _require(0.0 <= a.noise_prob <= 1.0, config, key + "noise_prob", f"must be in [0, 1], got {a.noise_prob}")
    _require(0.0 <= a.noise_min <= a.noise_max, config, key + "noise_min",
             f"noise levels need 0 <= noise_min <= noise_max (noise RMS / speech RMS), "
             f"got {a.noise_min} and {a.noise_max}")
    _require(bool(a.speeds) and all(0.5 <= s <= 2.0 for s in a.speeds), config, key + "speeds",
             f"must be a non-empty list of speed factors in [0.5, 2], got {a.speeds}")
    _require(a.gain_min_db <= a.gain_max_db, config, key + "gain_min_db",
             f"must be <= gain_max_db, got {a.gain_min_db} > {a.gain_max_db}")
    for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
        value = getattr(a, name)
        _require(value >= 0, config, key + name, f"must be >= 0, got {value}")
    _require(0.0 < a.time_mask_max_fraction <= 1.0, config, key + "time_mask_max_fraction",
             f"must be in (0, 1], got {a.time_mask_max_fraction}")
    _require(0.5 <= a.vtlp_min <= a.vtlp_max <= 2.0, config, key + "vtlp_min",
             f"warp factors need 0.5 <= vtlp_min <= vtlp_max <= 2, got {a.vtlp_min} and {a.vtlp_max}")


# Keys whose value may be an http(s) URL instead of a file.
URL_KEYS = ("Pretrained_model", "CheckpointConfig.resume_from")


def check_writable_dir(directory: str, where: str) -> None:
    """Raise ConfigError, its message starting with `where` (e.g. "deepspeech2.yaml:
    CheckpointConfig.ckpt_path" or "--output"), unless `directory` exists or can be created and a
    file can be written and removed in it. Run before any work, so a run never fails at its first
    write (nor an evaluation after it has finished)."""
    path = directory or "."
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{where}: {path} exists and is not a directory") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot create the directory {path}: {err.strerror}") from None
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: {path} is not a directory")
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"x")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"{where}: cannot write in {path}: {err.strerror}") from None


def check_files(config: Config, keys: Sequence[str]) -> None:
    """Raise `ConfigError` naming the key when one of `keys` (e.g. 'EvalConfig.test_manifest') is set
    to a path that does not exist or is a directory."""
    for key in keys:
        value = _get(config, key)
        if key in URL_KEYS and isinstance(value, str) and value.lower().startswith(("http://", "https://")):
            continue  # fetched by mindaudio.checkpoint, which names the URL if that fails
        if value and os.path.isdir(value):
            raise ConfigError(f"{config.source}: {key}: is a directory, not a file: {value}")
        if value and not os.path.exists(value):
            raise ConfigError(f"{config.source}: {key}: file not found: {value}")


def _get(config: Config, key: str) -> Any:
    """The value of a dotted yaml key ('EvalConfig.alpha', 'RuntimeConfig.mode', 'labels')."""
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, _SECTION_ATTRIBUTES.get(part, part))
    return obj


def load_config(path: Optional[str], overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Read the yaml at `path`, apply `overrides`, validate once.

    overrides: {"Section.key" or "key": value}, e.g. {"TrainingConfig.epochs": "3"}. String values
    are read as yaml scalars or lists ("3", "['A', '_']"), so they get the same type checks as the
    file; the empty string means the empty string. path None: no yaml, the defaults.
    """
    data = _read_yaml(path) if path is not None else {}
    source = path if path is not None else "<defaults>"
    for key, raw in (overrides or {}).items():
        parts = key.split(".")
        value = _override_value(key, raw)
        if len(parts) == 1:
            data[parts[0]] = value
        elif len(parts) == 2:
            if data.get(parts[0]) is None:  # absent, or an empty section in the yaml
                data[parts[0]] = {}
            section = data[parts[0]]
            if not isinstance(section, dict):
                raise ConfigError(f"{source}: {parts[0]} is not a section, cannot set {key}")
            section[parts[1]] = value
        else:
            raise ConfigError(f"override --{key}: expected --Section.key or --key")
    return config_from_dict(data, source=source)


def _read_yaml(path: str) -> Dict[str, Any]:
    """The yaml file's top-level mapping; ConfigError naming the file when it cannot be read."""
    if os.path.isdir(path):
        raise ConfigError(f"config file is a directory: {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid yaml: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _override_value(key: str, raw: Any) -> Any:
    """An override's value: a string is read as a yaml scalar or list, so it gets the same type
    checks as the file; the empty string stays the empty string (yaml would read it as null)."""
    if not isinstance(raw, str):
        return raw
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override --{key}: cannot read {raw!r} as a value") from None

