"""The data pipeline at LibriSpeech scale: start-up time, memory and epoch planning against size.

    python bench/librispeech_scale.py            # 17,578 .. 281,241 utterances (train-960's count)
    python bench/librispeech_scale.py --quick    # 2,197 .. 17,578 utterances: checks that it runs
    python bench/librispeech_scale.py --sizes 1000,4000 --json

For each size N a manifest of N utterances is written in the original's form (the form
`mindaudio/data/librispeech.py` writes, by `manifest.write_manifest`): durations and transcripts
drawn (seeded, with replacement) from the 1,519 utterances of Mini LibriSpeech train-clean-5
listed in `data/reference/librispeech_lengths` (a subset of train-clean-100: the training length
mix). Each listed utterance has one audio file and one transcript file, shared by all its draws;
the audio files start empty and the ones the first batch reads are filled with real speech (the
bundled `data/librispeech_mini` recordings, cut to exactly the listed duration: `bench.workloads`)
before the timed run, so the first batch decodes real audio of the length its manifest entry
gives. Each size runs in its own process (imports excluded from every figure) which does what the
trainer does before its first step, with `deepspeech2.yaml`'s data settings (buckets,
max_duration 35 s, batch 64, SortaGrad, 2 workers):

- load_split: `load_split` (manifest read, transcripts encoded, filtered, bucketed);
- sampler built: `BucketSampler` built as the trainer builds it (it plans epoch 0 to count its
  batches) and epoch 0's batches (SortaGrad: sorted);
- start -> first batch: the two above plus `build_dataset` for epoch 0 and its first padded batch
  (files read, features computed); filling the placeholder files is left out. The model's build
  and compile do not depend on N and are not part of it;
- plan an epoch: one shuffled epoch (epoch 1) planned by `BucketSampler.batches`, by count
  (batch 64) and by frames (`batch_frames` 80,000 = 64 x 1250 frames, the original's padded batch);
- memory (resident, RSS, in MB over the process's RSS just before `load_split`): held by the
  split, both samplers and their plans; the peak while loading and planning (sampled every 5 ms,
  the parsed manifest included); and with the epoch's dataset built and its first batch out
  (MindSpore's dataset engine included).

Also listed: batches per epoch and the distinct training input shapes (batch, frames, label
padding) of each plan, i.e. the graphs the trainer compiles before its first step: the one part of
the time to the first step besides the above that could depend on N.

Times are CPU seconds of the process (all its threads): on a shared machine they do not count
waiting for a core; wall seconds are in the JSON. The pure parts (sampler, plans) are the fastest
of 5 runs. The growth exponent of each figure is the least-squares slope of log(figure) against
log(N) over the three largest sizes (N doubling each time); PASS means <= 1.15: not faster than
linear, allowing for noise.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import workloads  # noqa: E402
from bench.child_process import RESULT_MARK, print_marked, run_child  # noqa: E402
from bench.host_info import load_average  # noqa: E402
from bench.process_memory import rss_mb  # noqa: E402

TRAIN_960_UTTERANCES = 281_241
# 281,241 / 16, / 8, / 4, / 2 and itself: each size doubles the one before.
FULL_SIZES = tuple(int(round(TRAIN_960_UTTERANCES / 2 ** k)) for k in range(4, -1, -1))
QUICK_SIZES = tuple(int(round(TRAIN_960_UTTERANCES / 2 ** k)) for k in range(7, 3, -1))
LISTED_SPLIT = "train-clean-5"
BATCH_SIZE = 64
BATCH_FRAMES = 64 * 1250
SLOPE_LIMIT = 1.15
SLOPE_POINTS = 3
# name, JSON key, unit, digits: the figures fitted against N.
FIGURES = (
    ("load_split", "load_cpu_s", "s", 2),
    ("sampler built (plans epoch 0)", "sampler_cpu_s", "s", 2),
    ("start -> first batch", "first_batch_cpu_s", "s", 2),
    ("plan an epoch, batch 64", "plan_count_cpu_s", "s", 3),
    ("plan an epoch, batch_frames 80,000", "plan_frames_cpu_s", "s", 3),
    ("memory: split + samplers + plans (RSS)", "held_mb", "MB", 1),
    ("memory: peak while loading + planning (RSS)", "peak_mb", "MB", 1),
    ("memory: split + running pipeline (RSS)", "pipeline_mb", "MB", 1),
)


# ---------------------------------------------------------------------------------------------
# The corpus: one placeholder audio file and one transcript per listed utterance

def write_corpus(directory: Path) -> Path:
    """`directory/wav/<id>.wav` (empty until filled) and `directory/txt/<id>.txt` (its transcript)
    for every listed train-clean-5 utterance; returns `directory`. Reruns leave both alone."""
    ids, _, _ = workloads.read_lengths(LISTED_SPLIT)
    texts = (workloads.LENGTHS_DIR / f"{LISTED_SPLIT}.transcripts.txt").read_text(
        encoding="utf-8").splitlines()
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    (directory / "txt").mkdir(parents=True, exist_ok=True)
    for uid, text in zip(ids, texts):
        (directory / "wav" / f"{uid}.wav").touch()
        txt = directory / "txt" / f"{uid}.txt"
        if not txt.exists():
            txt.write_text(text + "\n", encoding="utf-8")
    return directory


def draws(size: int, seed: int = 0) -> np.ndarray:
    """Which listed utterance each of `size` manifest entries repeats: int64 (size,), seeded."""
    ids, _, _ = workloads.read_lengths(LISTED_SPLIT)
    return np.random.default_rng([seed, size]).integers(0, len(ids), size)


def write_scale_manifest(corpus: Path, size: int, seed: int = 0) -> Path:
    """A manifest of `size` utterances over `write_corpus(corpus)`'s files, in the original's form
    (`manifest.write_manifest`): `corpus/manifest_<size>.json`. Durations are the listed ones."""
    from mindaudio.data.manifest import write_manifest

    ids, durations, _ = workloads.read_lengths(LISTED_SPLIT)
    samples = ({"wav_path": f"wav/{ids[i]}.wav", "txt_path": f"txt/{ids[i]}.txt",
                "duration": float(durations[i])} for i in draws(size, seed))
    path = corpus / f"manifest_{size}.json"
    write_manifest(path, corpus, samples)
    return path


# ---------------------------------------------------------------------------------------------
# Measuring one size (in its own process)

class _PeakRss:
    """The highest RSS (MB) seen while active, sampled every `interval` seconds by a thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class _Clock:
    """CPU and wall seconds since it was made."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def elapsed(self):
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def _min_cpu(fn, repeats: int):
    """(smallest CPU seconds of `repeats` calls of fn, its wall seconds, fn's last result)."""
    best = None
    for _ in range(repeats):
        clock = _Clock()
        out = fn()
        cpu, wall = clock.elapsed()
        if best is None or cpu < best[0]:
            best = (cpu, wall)
    return best[0], best[1], out


def _count_sampler(split, batch_size: int, seed: int, sortagrad: bool):
    from mindaudio.data.sampler import BucketSampler

    sampler = BucketSampler(split.durations, split.edges, split.bucket_frames, batch_size,
                            seed=seed, shuffle=True, sortagrad=sortagrad)
    return sampler, sampler.batches(0)


def measure_size(manifest: Path, batch_size: int = BATCH_SIZE, batch_frames: int = BATCH_FRAMES,
                 num_workers: int = 2, seed: int = 1, plan_repeats: int = 5) -> Dict:
    """What the trainer does with `manifest` before its first step, timed, and one shuffled
    epoch planned both ways (the fastest of `plan_repeats` plans). Returns a dict of figures
    (see the module docstring) plus what a test can check them against: utterances kept,
    batches per epoch, the first batch."""
    import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
    from mindaudio.config import Config
    from mindaudio.data.dataset import build_dataset, load_split
    from mindaudio.data.sampler import BucketSampler
    from mindaudio.data.text import CharTokenizer
    from mindaudio.models.deepspeech2 import output_length

    config = Config()
    train, spect = config.TrainingConfig, config.SpectConfig
    tokenizer = CharTokenizer.from_config(config)
    signal = workloads.speech_signal()
    gc.collect()
    rss_start = rss_mb()
    result: Dict = {"manifest": str(manifest)}
    with _PeakRss() as peak:
        # The trainer's start (mindaudio/training/trainer.py), timed part by part.
        clock = _Clock()
        split = load_split(manifest, tokenizer, spect, bucket_boundaries=train.bucket_boundaries,
                           max_duration=train.max_duration, output_frames=output_length)
        result["load_cpu_s"], result["load_wall_s"] = clock.elapsed()
        # As the trainer builds it, then its epoch 0 (the fastest of `plan_repeats`: it is pure).
        result["sampler_cpu_s"], result["sampler_wall_s"], (sampler, batches) = _min_cpu(
            lambda: _count_sampler(split, batch_size, seed, train.sortagrad), plan_repeats)
        result["plan_count_cpu_s"], result["plan_count_wall_s"], count_plan = _min_cpu(
            lambda: sampler.batches(1), plan_repeats)
        frames_sampler = BucketSampler(split.durations, split.edges, split.bucket_frames, batch_size,
                                       batch_frames=batch_frames, seed=seed, shuffle=True,
                                       sortagrad=train.sortagrad)
        result["plan_frames_cpu_s"], result["plan_frames_wall_s"], frames_plan = _min_cpu(
            lambda: frames_sampler.batches(1), plan_repeats)
        gc.collect()
        result["held_mb"] = rss_mb() - rss_start
    result["peak_mb"] = peak.peak - rss_start
    # Fill the placeholder files the first batch reads: not part of the start-up.
    result["audio_written_s"] = workloads.materialize(
        [split.utterances[i] for i in batches[0].indices], signal)
    clock = _Clock()
    dataset = build_dataset(split, spect, batches, tokenizer.blank_id, num_workers)
    iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    features, feature_lengths, labels, label_lengths, indices = next(iterator)
    build_cpu, build_wall = clock.elapsed()
    # The pipeline would go on with later batches (from the empty placeholders): stop it.
    iterator.stop()
    result["first_batch_cpu_s"] = result["load_cpu_s"] + result["sampler_cpu_s"] + build_cpu
    result["first_batch_wall_s"] = result["load_wall_s"] + result["sampler_wall_s"] + build_wall
    gc.collect()
    result["pipeline_mb"] = rss_mb() - rss_start
    del dataset, iterator
    result.update(first_batch_shape=list(features.shape),
                  first_batch_finite=bool(np.isfinite(features).all()),
                  first_batch_indices=[int(i) for i in indices],
                  first_batch_planned=list(batches[0].indices),
                  first_batch_frames=batches[0].frames,
                  first_batch_label_lengths=[int(n) for n in label_lengths],
                  first_batch_feature_lengths=[int(n) for n in feature_lengths])

    result.update(
        utterances=len(split.utterances), dropped=split.drops.total,
        audio_hours=float(split.durations.sum()) / 3600.0,
        batches_count=len(count_plan), batches_frames=len(frames_plan),
        shapes_count=_shapes(split, count_plan), shapes_frames=_shapes(split, frames_plan),
        count_plan_covers_all=_covers_all(count_plan, len(split.utterances)),
        frames_plan_covers_all=_covers_all(frames_plan, len(split.utterances)),
        frames_plan_max_padded=max(len(b.indices) * b.frames for b in frames_plan),
        count_plan_max_batch=max(len(b.indices) for b in count_plan))
    return result


def _shapes(split, plan) -> int:
    """Distinct training input shapes (batch, frames, label padding) of a plan: the graphs the
    trainer compiles before its first step (`mindaudio.training.precompile`)."""
    return len({(len(batch.indices), batch.frames, split.label_pad[batch.bucket]) for batch in plan})


def _covers_all(plan, utterances: int) -> bool:
    """Whether the plan's batches hold every utterance index exactly once."""
    return sorted(i for batch in plan for i in batch.indices) == list(range(utterances))


# ---------------------------------------------------------------------------------------------
# Fitting and the table

def growth_exponent(sizes: Sequence[float], values: Sequence[float]) -> Optional[float]:
    """Least-squares slope of log(value) against log(size); None with fewer than two usable
    points (a value <= 0 cannot be fitted)."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if s > 0 and v and v > 0]
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def table(results: List[Dict], points: int = SLOPE_POINTS, limit: float = SLOPE_LIMIT) -> List[str]:
    """Markdown lines: one row per figure, one column per size, the exponent and PASS/FAIL."""
    results = sorted(results, key=lambda r: r["size"])
    sizes = [r["size"] for r in results]
    header = ("| figure | " + " | ".join(f"N={n:,}" for n in sizes)
              + f" | growth exponent (largest {min(points, len(sizes))}) | <= {limit} |")
    lines = [header, "|---" * (len(sizes) + 3) + "|"]
    verdicts = {}
    for name, key, unit, digits in FIGURES:
        values = [r[key] for r in results]
        slope = growth_exponent(sizes[-points:], values[-points:])
        verdicts[key] = None if slope is None else slope <= limit
        verdict = "n/a" if slope is None else ("PASS" if slope <= limit else "FAIL")
        lines.append(f"| {name} ({unit}) | " + " | ".join(f"{v:.{digits}f}" for v in values)
                     + f" | {'n/a' if slope is None else f'{slope:.2f}'} | {verdict} |")
    for label, key in (("utterances kept", "utterances"), ("audio (h)", "audio_hours"),
                       ("batches per epoch, batch 64", "batches_count"),
                       ("batches per epoch, batch_frames", "batches_frames"),
                       ("input shapes to compile, batch 64", "shapes_count"),
                       ("input shapes to compile, batch_frames", "shapes_frames")):
        lines.append(f"| {label} | " + " | ".join(
            f"{r[key]:,.0f}" if key != "audio_hours" else f"{r[key]:,.1f}" for r in results)
            + " | | |")
    return lines


# ---------------------------------------------------------------------------------------------
# Driver

def run_size(corpus: Path, size: int, seed: int = 0) -> Dict:
    """Write the manifest of `size` utterances and measure it in a fresh process."""
    manifest = write_scale_manifest(corpus, size, seed)
    command = [sys.executable, str(Path(__file__).resolve()), "--job", str(manifest)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = run_child(command, cwd=REPO_ROOT, env=env)
    mark, result = run.first(RESULT_MARK)
    if mark is not None:
        result.update(size=size, manifest_mb=manifest.stat().st_size / 2 ** 20)
        return result
    raise RuntimeError(f"measuring N={size} failed (exit {run.returncode}):\n{run.stderr_tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"sizes {', '.join(map(str, QUICK_SIZES))}")
    parser.add_argument("--sizes", default="", help="comma-separated manifest sizes (utterances)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws from the length list")
    parser.add_argument("--json", action="store_true", help="also print the raw measurements as JSON")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print_marked(RESULT_MARK, measure_size(Path(args.job)))
        return 0
    sizes = ([int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes
             else list(QUICK_SIZES if args.quick else FULL_SIZES))
    load_before = load_average()
    wall = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="ds2scale_") as tmp:
        corpus = write_corpus(Path(tmp))
        for size in sizes:
            print(f"N={size:,} ...", flush=True)
            results.append(run_size(corpus, size, args.seed))
    wall = time.perf_counter() - wall
    command = "python bench/librispeech_scale.py" + (" --quick" if args.quick else "") + (
        f" --sizes {args.sizes}" if args.sizes else "")
    lines = [f"LibriSpeech-scale data pipeline (`{command}`; {wall:.0f} s wall; load average "
             f"before {load_before}, after {load_average()}); times in CPU seconds:", ""]
    lines += table(results)
    print("\n" + "\n".join(lines))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
