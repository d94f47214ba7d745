"""Training-time data augmentation: speed and volume perturbation, noise mixing, vocal tract length
perturbation (VTLP), SpecAugment.

Pure numpy, one utterance at a time, in the order the original's ancestor (deepspeech.pytorch)
applied them: speed and gain on the waveform, then noise, then features (VTLP warps the magnitude
spectrogram inside them, before the log), then SpecAugment on the normalised log spectrogram. Every random choice comes from an explicit `np.random.Generator`.

`Augmentation` bundles the effects `AugmentationConfig` switches on. Its `generators(epoch, index)`
derive one generator per effect from (seed, epoch, utterance index) alone, so an epoch's augmented
batches do not depend on batch composition, worker scheduling or where a resumed run restarts, and
switching one effect on or off does not change the draws of the others. The dataset applies it to
training batches only; evaluation never receives one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile

from mindaudio.config import UserError
from mindaudio.data.audio import resample

NOISE_EXTENSIONS = (".wav", ".flac")

# Appended, never reordered: an effect's position seeds its generator (see `generators`).
EFFECTS = ("speed", "gain", "noise", "spec_augment", "vtlp")

# First word of every augmentation seed, so these streams never coincide with the sampler's
# Generator([seed, epoch]) or any other seeded stream of the project.
_STREAM_TAG = 0x41554735  # "AUG5"


class AugmentError(UserError, ValueError):
    """An augmentation that cannot be set up or applied; the message names the file or value."""


# ---------------------------------------------------------------- SpecAugment


@dataclass(frozen=True)
class SpecAugmentPolicy:
    """How many masks of which maximum widths SpecAugment (Park et al., 2019) draws.

    Widths are drawn uniformly from 0..max; a time mask is also at most
    floor(time_mask_max_fraction * utterance frames) wide (the paper's p), so short utterances
    keep most of their frames.
    """
    freq_masks: int = 2
    freq_mask_width: int = 27  # frequency bins
    time_masks: int = 2
    time_mask_width: int = 40  # frames (10 ms each with the default hop)
    time_mask_max_fraction: float = 0.2

    def __post_init__(self):
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            if getattr(self, name) < 0:
                raise AugmentError(f"SpecAugment {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.time_mask_max_fraction <= 1.0:
            raise AugmentError(f"SpecAugment time_mask_max_fraction must be in [0, 1], "
                               f"got {self.time_mask_max_fraction}")


Span = Tuple[int, int]  # (start, width)


def draw_masks(freq_bins: int, length: int, policy: SpecAugmentPolicy,
               rng: np.random.Generator) -> Tuple[List[Span], List[Span]]:
    """Frequency and time masks for a (freq_bins, length) spectrogram, as (start, width) spans.

    Frequency spans lie in [0, freq_bins); time spans in [0, length), each at most
    min(time_mask_width, floor(time_mask_max_fraction * length)) frames. Zero-width spans are
    kept (they mask nothing) so the number of draws never depends on the values drawn.
    """
    if freq_bins < 1 or length < 0:
        raise AugmentError(f"cannot mask a spectrogram of {freq_bins} bins x {length} frames")
    freq_spans = []
    widest_freq = min(policy.freq_mask_width, freq_bins)
    for _ in range(policy.freq_masks):
        width = int(rng.integers(0, widest_freq + 1))
        freq_spans.append((int(rng.integers(0, freq_bins - width + 1)), width))
    time_spans = []
    widest_time = min(policy.time_mask_width, int(math.floor(policy.time_mask_max_fraction * length)))
    for _ in range(policy.time_masks):
        width = int(rng.integers(0, widest_time + 1))
        time_spans.append((int(rng.integers(0, length - width + 1)), width))
    return freq_spans, time_spans


def apply_masks(spectrogram: np.ndarray, freq_spans: Sequence[Span], time_spans: Sequence[Span],
                value: float = 0.0) -> np.ndarray:
    """A copy of the (freq, frames) `spectrogram` with the spans set to `value`."""
    masked = np.array(spectrogram, copy=True)
    for start, width in freq_spans:
        masked[start:start + width, :] = value
    for start, width in time_spans:
        masked[:, start:start + width] = value
    return masked


def spec_augment(spectrogram: np.ndarray, policy: SpecAugmentPolicy, rng: np.random.Generator,
                 length: Optional[int] = None, value: float = 0.0) -> np.ndarray:
    """SpecAugment frequency and time masking of a (freq, frames) log spectrogram.

    length: the utterance's true frames (default: all columns); time masks stay inside it and
    columns beyond it are left untouched (padding stays padding). `value` 0 is the utterance's
    mean once features are normalised, so a mask removes information without adding energy.
    Returns a new float array of the same shape.
    """
    freq_bins, frames = spectrogram.shape
    length = frames if length is None else int(length)
    if not 0 <= length <= frames:
        raise AugmentError(f"true length {length} outside the {frames} frames of the spectrogram")
    freq_spans, time_spans = draw_masks(freq_bins, length, policy, rng)
    masked = apply_masks(spectrogram[:, :length], freq_spans, time_spans, value)
    if length == frames:
        return masked
    return np.concatenate([masked, spectrogram[:, length:]], axis=1)


# ---------------------------------------------------------------- VTLP

# Fraction of the Nyquist frequency up to which VTLP scales frequencies linearly (for warp
# factors <= 1; above 1 the bend comes earlier so that no frequency leaves the band). Jaitly and
# Hinton (2013) bend at 4.8 of 8 kHz; bending later keeps more of the narrow 4 kHz band of 8 kHz
# audio in the linear part.
VTLP_BOUNDARY = 0.8


def vtlp_source_positions(freq_bins: int, alpha: float, boundary: float = VTLP_BOUNDARY) -> np.ndarray:
    """For each output bin of a VTLP warp by `alpha`, the (fractional) input bin it reads.

    The warp maps input frequency f (as a fraction of Nyquist) to alpha * f up to
    b = boundary * min(alpha, 1) / alpha, then linearly to the Nyquist frequency, which stays put:
    continuous, increasing, 0 -> 0 and 1 -> 1. Returns float64 (freq_bins,) in [0, freq_bins - 1].
    """
    if alpha <= 0:
        raise AugmentError(f"VTLP warp factor must be > 0, got {alpha}")
    if freq_bins < 2:
        return np.zeros(freq_bins)
    inputs = np.linspace(0.0, 1.0, freq_bins)
    bend = boundary * min(alpha, 1.0) / alpha
    warped = np.where(inputs <= bend, alpha * inputs,
                      alpha * bend + (1.0 - alpha * bend) * (inputs - bend) / (1.0 - bend))
    return np.interp(inputs, warped, inputs) * (freq_bins - 1)


def vtlp_warp(magnitude: np.ndarray, alpha: float, boundary: float = VTLP_BOUNDARY) -> np.ndarray:
    """A (freq, frames) magnitude spectrogram whose frequency axis is warped by `alpha`: what the
    input holds at frequency f appears at about alpha * f (>1: formants move up, as from a shorter
    vocal tract). Linear interpolation between neighbouring bins; float32, same shape."""
    magnitude = np.asarray(magnitude, dtype=np.float32)
    source = vtlp_source_positions(magnitude.shape[0], alpha, boundary)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, magnitude.shape[0] - 1)
    weight = (source - low).astype(np.float32)[:, None]
    return (1.0 - weight) * magnitude[low] + weight * magnitude[high]


# ---------------------------------------------------------------- waveform perturbations


def speed_perturb(signal: np.ndarray, speed: float, sample_rate: int) -> np.ndarray:
    """Play a (samples,) signal `speed` times faster, by resampling (tempo and pitch both change,
    as Kaldi's speed perturbation): returns float32 (round(samples / speed),) at the same rate."""
    if speed <= 0:
        raise AugmentError(f"speed must be > 0, got {speed}")
    if speed == 1.0:
        return np.asarray(signal, dtype=np.float32)
    # Reading the samples as if recorded at sample_rate * speed and resampling to sample_rate
    # keeps every sound but lasts 1 / speed as long.
    return resample(signal, sample_rate * speed, sample_rate)


def apply_gain(signal: np.ndarray, gain_db: float) -> np.ndarray:
    """The signal scaled by `gain_db` decibels (amplitude x 10^(gain_db / 20)), float32, unclipped."""
    return (np.asarray(signal, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0)))


def rms(signal: np.ndarray) -> float:
    """Root mean square of a signal, computed in float64."""
    values = np.asarray(signal, dtype=np.float64)
    return float(np.sqrt(np.mean(values * values))) if values.size else 0.0


def snr_of_noise_level(level: float) -> float:
    """SNR in dB of a mix whose noise RMS is `level` times the speech RMS: -20 log10(level).

    Level 0 is clean speech (infinite SNR); 0.5 is about 6 dB, 0.1 is 20 dB.
    """
    if level < 0:
        raise AugmentError(f"noise level must be >= 0, got {level}")
    return math.inf if level == 0 else -20.0 * math.log10(level)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 10 log10(energy(speech) / energy(scaled noise)) = snr_db.

    Both (samples,) of equal length. Silent speech or silent noise, or an infinite SNR, leave the
    speech unchanged (there is no level to match). Returns float32 (samples,).
    """
    speech = np.asarray(speech, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if speech.shape != noise.shape:
        raise AugmentError(f"speech {speech.shape} and noise {noise.shape} differ in length")
    speech_rms, noise_rms = rms(speech), rms(noise)
    if math.isinf(snr_db) or speech_rms == 0.0 or noise_rms == 0.0:
        return speech.copy()
    scale = speech_rms / (noise_rms * 10.0 ** (snr_db / 20.0))
    return (speech.astype(np.float64) + scale * noise.astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------- noise files


def list_noise_files(directory: str) -> List[str]:
    """The WAV and FLAC files under `directory` (recursively), sorted so draws are reproducible.

    Raises AugmentError naming the directory when it is missing or holds no such file.
    """
    if directory and os.path.isfile(directory):
        raise AugmentError(f"noise directory {directory} is a file, not a directory")
    if not directory or not os.path.isdir(directory):
        raise AugmentError(f"noise directory not found: {directory!r}")
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in files
                     if name.lower().endswith(NOISE_EXTENSIONS))
    if not found:
        raise AugmentError(f"no {' or '.join(NOISE_EXTENSIONS)} files in the noise directory "
                           f"{directory}")
    return sorted(found)


@dataclass(frozen=True)
class NoiseFile:
    path: str
    frames: int  # samples per channel
    sample_rate: int


class NoiseBank:
    """Noise recordings to draw segments from; only headers are read up front.

    Holds plain data (paths and lengths), so dataset worker processes can receive it by pickling.
    """

    def __init__(self, files: Sequence[NoiseFile]):
        if not files:
            raise AugmentError("a noise bank needs at least one file")
        self.files = tuple(files)

    @classmethod
    def from_dir(cls, directory: str) -> "NoiseBank":
        files = []
        for path in list_noise_files(directory):
            try:
                info = soundfile.info(path)
            except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
                raise AugmentError(f"cannot read noise file {path}: {err}") from err
            if info.frames < 1 or info.samplerate < 1:
                raise AugmentError(f"noise file {path} holds no audio")
            files.append(NoiseFile(path, int(info.frames), int(info.samplerate)))
        return cls(files)

    def __len__(self) -> int:
        return len(self.files)

    def segment(self, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """A random stretch of a random file: float32 (num_samples,) mono at `sample_rate`.

        The file and the start are uniform; a file shorter than needed is repeated end to end.
        """
        if num_samples < 1:
            raise AugmentError(f"cannot draw {num_samples} samples of noise")
        source = self.files[int(rng.integers(0, len(self.files)))]
        # Source-rate samples covering num_samples at the target rate, plus a few for the
        # resampler's rounding; the excess is trimmed below.
        needed = int(math.ceil(num_samples * source.sample_rate / sample_rate)) + 4
        start = int(rng.integers(0, source.frames - needed + 1)) if source.frames > needed else 0
        try:
            data, _ = soundfile.read(source.path, start=start, stop=min(source.frames, start + needed),
                                     dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
            raise AugmentError(f"cannot read noise file {source.path}: {err}") from err
        noise = resample(data.mean(axis=1, dtype=np.float32), source.sample_rate, sample_rate)
        if noise.size == 0:
            raise AugmentError(f"noise file {source.path} gave no samples")
        if noise.size < num_samples:
            noise = np.tile(noise, -(-num_samples // noise.size))
        return np.ascontiguousarray(noise[:num_samples], dtype=np.float32)


# ---------------------------------------------------------------- the configured pipeline


@dataclass(frozen=True)
class Augmentation:
    """The augmentation of one training run; `None` in its place means none at all.

    speeds: speed factors drawn uniformly per utterance (empty: no speed or gain perturbation);
    gain_db: (low, high) dB, uniform, applied with the speed; noise: files to mix in with
    probability noise_prob at a noise level uniform in noise_levels (noise RMS / speech RMS, see
    `snr_of_noise_level`); spec_policy: SpecAugment masks (None: no masking); vtlp_range: (low,
    high) VTLP warp factor, uniform (None: no warping).
    """
    sample_rate: int
    seed: int
    speeds: Tuple[float, ...] = ()
    gain_db: Tuple[float, float] = (0.0, 0.0)
    noise: Optional[NoiseBank] = None
    noise_prob: float = 0.0
    noise_levels: Tuple[float, float] = (0.0, 0.0)
    spec_policy: Optional[SpecAugmentPolicy] = None
    vtlp_range: Optional[Tuple[float, float]] = None

    @classmethod
    def from_config(cls, aug, sample_rate: int, seed: int) -> Optional["Augmentation"]:
        """From an `AugmentationConfig`; None when every effect is off.

        Noise is on when `noise_dir` is set and `noise_prob` > 0; its files are listed here, so
        a missing or empty directory fails before training starts (AugmentError).
        """
        speeds = tuple(float(s) for s in aug.speeds) if aug.speed_volume_perturb else ()
        noise = None
        if aug.noise_dir and aug.noise_prob > 0:
            noise = NoiseBank.from_dir(aug.noise_dir)
        policy = None
        if aug.spec_augment:
            policy = SpecAugmentPolicy(aug.freq_masks, aug.freq_mask_width, aug.time_masks,
                                       aug.time_mask_width, aug.time_mask_max_fraction)
        vtlp_range = (float(aug.vtlp_min), float(aug.vtlp_max)) if aug.vtlp else None
        if not speeds and noise is None and policy is None and vtlp_range is None:
            return None
        return cls(sample_rate=int(sample_rate), seed=int(seed), speeds=speeds,
                   gain_db=(float(aug.gain_min_db), float(aug.gain_max_db)), noise=noise,
                   noise_prob=float(aug.noise_prob),
                   noise_levels=(float(aug.noise_min), float(aug.noise_max)), spec_policy=policy,
                   vtlp_range=vtlp_range)

    @property
    def speed_range(self) -> Tuple[float, float]:
        """(slowest, fastest) speed factor applied; (1, 1) without speed perturbation."""
        if not self.speeds:
            return 1.0, 1.0
        return min(self.speeds), max(self.speeds)

    def generators(self, epoch: int, index: int) -> Dict[str, np.random.Generator]:
        """One independent generator per effect for utterance `index` in `epoch`."""
        return {effect: np.random.default_rng([_STREAM_TAG, self.seed, epoch, index, number])
                for number, effect in enumerate(EFFECTS)}

    def perturb_waveform(self, signal: np.ndarray, rngs: Dict[str, np.random.Generator]
                         ) -> np.ndarray:
        """Speed, gain, then noise, as configured. signal: float32 (samples,) at sample_rate."""
        if self.speeds:
            speed = self.speeds[int(rngs["speed"].integers(0, len(self.speeds)))]
            signal = speed_perturb(signal, speed, self.sample_rate)
            signal = apply_gain(signal, float(rngs["gain"].uniform(*self.gain_db)))
        if self.noise is not None:
            rng = rngs["noise"]
            if rng.random() < self.noise_prob:
                level = float(rng.uniform(*self.noise_levels))
                noise = self.noise.segment(signal.size, self.sample_rate, rng)
                signal = mix_at_snr(signal, noise, snr_of_noise_level(level))
        return signal

    def magnitude_warp(self, rngs: Dict[str, np.random.Generator]
                       ) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        """This utterance's VTLP as a function of its (freq, frames) magnitude spectrogram, or
        None without VTLP. The factor is drawn here, once per utterance."""
        if self.vtlp_range is None:
            return None
        alpha = float(rngs["vtlp"].uniform(*self.vtlp_range))
        return lambda magnitude: vtlp_warp(magnitude, alpha)

    def mask_spectrogram(self, spectrogram: np.ndarray, rngs: Dict[str, np.random.Generator]
                         ) -> np.ndarray:
        """SpecAugment over the whole (freq, frames) array, which must be the true length only."""
        if self.spec_policy is None:
            return spectrogram
        return spec_augment(spectrogram, self.spec_policy, rngs["spec_augment"])


__all__ = ["AugmentError", "Augmentation", "EFFECTS", "NOISE_EXTENSIONS", "NoiseBank", "NoiseFile",
           "SpecAugmentPolicy", "apply_gain", "apply_masks", "draw_masks", "list_noise_files",
           "mix_at_snr", "rms", "snr_of_noise_level", "spec_augment", "speed_perturb", "VTLP_BOUNDARY",
           "vtlp_source_positions", "vtlp_warp"]
