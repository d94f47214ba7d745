"""CPU cost of the input pipeline per second of audio, with each training augmentation and all of them.

Loads every file under --audio (recursively, WAV/FLAC, at most --max_files), computes the training
features exactly as `PaddedBatchSource` does (load, resample, augment, log spectrogram, SpecAugment)
in one thread, and reports CPU milliseconds per second of audio: compare with a training step's
seconds per second of audio (the `audio_seconds_per_second` of train_log.jsonl) to see whether the
`num_workers` feature threads keep up.

    python bench/augment_cost.py --audio data/librispeech_mini --noise_dir NOISE [--repeats 3]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mindaudio.config import AugmentationConfig, SpectConfig  # noqa: E402
from mindaudio.data.audio import audio_duration, load_audio  # noqa: E402
from mindaudio.data.augment import Augmentation, list_noise_files  # noqa: E402
from mindaudio.data.features import log_spectrogram  # noqa: E402


def variants(noise_dir):
    rows = [("features only (augmentation off)", AugmentationConfig()),
            ("+ speed and gain", AugmentationConfig(speed_volume_perturb=True)),
            ("+ SpecAugment", AugmentationConfig(spec_augment=True))]
    if noise_dir:
        rows.append(("+ noise (noise_prob 1)", AugmentationConfig(noise_dir=noise_dir, noise_prob=1.0)))
    rows.append(("all on" + (" (noise_prob 0.4)" if noise_dir else ""),
                 AugmentationConfig(speed_volume_perturb=True, spec_augment=True, noise_dir=noise_dir or "",
                                    noise_prob=0.4)))
    return rows


def cpu_seconds(paths, spect, augmentation, epoch) -> float:
    start = time.process_time()
    for index, path in enumerate(paths):
        signal = load_audio(path, spect.sample_rate)
        rngs = augmentation.generators(epoch, index) if augmentation else None
        if rngs:
            signal = augmentation.perturb_waveform(signal, rngs)
        features = log_spectrogram(signal, spect)
        if rngs:
            augmentation.mask_spectrogram(features, rngs)
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", required=True, help="folder of speech files (searched recursively)")
    parser.add_argument("--noise_dir", default="", help="noise files; none: the noise rows are skipped")
    parser.add_argument("--max_files", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    spect = SpectConfig()
    paths = list_noise_files(args.audio)[:args.max_files]  # any WAV/FLAC listing will do
    seconds = sum(audio_duration(path) for path in paths)
    print(f"{len(paths)} files, {seconds:.1f} s of audio, features at {spect.sample_rate} Hz, one thread")
    for name, aug_config in variants(args.noise_dir):
        augmentation = Augmentation.from_config(aug_config, spect.sample_rate, seed=1)
        best = min(cpu_seconds(paths, spect, augmentation, epoch) for epoch in range(args.repeats))
        print(f"{name:38s} {1000.0 * best / seconds:6.2f} ms CPU per second of audio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
