"""Draw what each training augmentation does to one real utterance, as the model sees it.

One PNG, one row per effect, all on the same time axis (seconds) and colour scale: the normalised
log spectrogram of the original, then slowed and sped up to the slowest and fastest of
`AugmentationConfig.speeds`, with the largest configured gain, with noise from `--noise_dir` at
the SNR of `noise_max` (or `--snr`), and with SpecAugment masks drawn from the configured policy
(outlined in white). Each panel's title gives what was measured on its signal (duration, RMS level,
SNR of the added noise, mask spans), so the picture can be checked against the config.

    python scripts/plot_augmentation.py --audio FILE.flac [-c deepspeech2.yaml] [--noise_dir DIR]
        [--snr DB] [--seed 0] [--out docs/augmentation.png]
"""
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mindaudio.cli import parse_command_line, run_cli  # noqa: E402
from mindaudio.data.audio import load_audio  # noqa: E402
from mindaudio.data.augment import (NoiseBank, SpecAugmentPolicy, apply_gain, apply_masks,  # noqa: E402
                                    draw_masks, mix_at_snr, rms, snr_of_noise_level, speed_perturb)
from mindaudio.data.features import hop_size, log_spectrogram  # noqa: E402

# Colour limits of the normalised features (about the 1st and 99.9th percentiles of speech).
VMIN, VMAX = -2.0, 4.0


def dbfs(signal) -> float:
    level = rms(signal)
    return 20.0 * math.log10(level) if level > 0 else -math.inf


def measured_snr(clean, mixed) -> float:
    clean = np.asarray(clean, dtype=np.float64)
    added = np.asarray(mixed, dtype=np.float64) - clean
    return 10.0 * math.log10(np.sum(clean ** 2) / np.sum(added ** 2))


def panels(signal, config, noise_dir, snr, seed):
    """(title, signal, masks or None) for the original and each effect."""
    aug, rate = config.AugmentationConfig, config.SpectConfig.sample_rate
    rng = np.random.default_rng(seed)
    seconds = signal.size / rate
    rows = [(f"original: {seconds:.2f} s, {dbfs(signal):.1f} dBFS", signal, None)]
    for speed in sorted({min(aug.speeds), max(aug.speeds)}):
        out = speed_perturb(signal, speed, rate)
        rows.append((f"speed {speed:g}: {out.size / rate:.2f} s (original / {speed:g} = {seconds / speed:.2f} s)",
                     out, None))
    for gain in sorted({aug.gain_min_db, aug.gain_max_db}):
        out = apply_gain(signal, gain)
        rows.append((f"gain {gain:+g} dB: {dbfs(out):.1f} dBFS (features are normalised per utterance; "
                     f"log1p keeps a level effect)", out, None))
    if noise_dir:
        target = snr if snr is not None else snr_of_noise_level(aug.noise_max)
        noise = NoiseBank.from_dir(noise_dir).segment(signal.size, rate, rng)
        out = mix_at_snr(signal, noise, target)
        rows.append((f"noise from {os.path.basename(os.path.normpath(noise_dir))}/ at {target:.1f} dB SNR: measured {measured_snr(signal, out):.2f} dB",
                     out, None))
    policy = SpecAugmentPolicy(aug.freq_masks, aug.freq_mask_width, aug.time_masks, aug.time_mask_width,
                               aug.time_mask_max_fraction)
    rows.append(("SpecAugment", signal, policy))
    return rows


def plot(rows, config, out_path, seed):
    import matplotlib
    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    spect = config.SpectConfig
    frame_s = hop_size(spect) / spect.sample_rate
    nyquist_khz = spect.sample_rate / 2000.0
    longest = max(signal.size for _, signal, _ in rows) / spect.sample_rate
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.1 * len(rows)), sharex=True, squeeze=False)
    image = None
    for ax, (title, signal, policy) in zip(axes[:, 0], rows):
        features = log_spectrogram(signal, spect)
        freq_bins, frames = features.shape
        if policy is not None:
            freq_spans, time_spans = draw_masks(freq_bins, frames, policy, np.random.default_rng(seed))
            features = apply_masks(features, freq_spans, time_spans)
            spans = ", ".join([f"{w} bins at {s}" for s, w in freq_spans]
                              + [f"{w} frames at {s}" for s, w in time_spans])
            title = (f"SpecAugment (max {policy.freq_mask_width} bins; max {policy.time_mask_width} frames "
                     f"and {policy.time_mask_max_fraction:g} of {frames}): {spans}")
        image = ax.imshow(features, origin="lower", aspect="auto", cmap="magma", vmin=VMIN, vmax=VMAX,
                          extent=(0, frames * frame_s, 0, nyquist_khz), interpolation="nearest")
        if policy is not None:
            bin_khz = nyquist_khz / (freq_bins - 1)
            for start, width in freq_spans:
                ax.add_patch(Rectangle((0, start * bin_khz), frames * frame_s, width * bin_khz,
                                       fill=False, ec="white", ls="--", lw=1))
            for start, width in time_spans:
                ax.add_patch(Rectangle((start * frame_s, 0), width * frame_s, nyquist_khz,
                                       fill=False, ec="white", ls="--", lw=1))
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("kHz")
        ax.set_xlim(0, longest)
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.6, label="normalised log1p |STFT|")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def own_arguments(parser) -> None:
    parser.add_argument("--audio", required=True, help="a speech recording (any soundfile format)")
    parser.add_argument("--noise_dir", default=None,
                        help="WAV/FLAC noise files (default: AugmentationConfig.noise_dir; none: no noise row)")
    parser.add_argument("--snr", type=float, default=None, help="SNR in dB (default: that of noise_max)")
    parser.add_argument("--seed", type=int, default=0, help="draws the noise segment and the masks")
    parser.add_argument("--out", default="docs/augmentation.png")


def main(argv=None) -> int:
    # -c: the yaml whose SpectConfig and AugmentationConfig to show.
    config, args = parse_command_line(argv, __doc__, own_arguments, single_process=True, runs_model=False)
    signal = load_audio(args.audio, config.SpectConfig.sample_rate)
    noise_dir = args.noise_dir if args.noise_dir is not None else config.AugmentationConfig.noise_dir
    rows = panels(signal, config, noise_dir, args.snr, args.seed)
    plot(rows, config, args.out, args.seed)
    for title, _, _ in rows:
        print(title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
