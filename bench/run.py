"""Run every DeepSpeech2 benchmark, print one table and write it to bench/RESULTS.md.

    python bench/run.py            # the full measurement (about 15-20 minutes on 2 cores)
    python bench/run.py --quick    # tiny settings to check that everything runs (about 2 minutes)

Every figure is ours against a baseline measured in the same run: the original MindAudio scheme
reproduced by our code as a configuration (`TrainingConfig.fixed_frames: 1250`,
`EvalConfig.fixed_frames: 3500`, `ModelConfig.masked: false`). Each benchmark runs in its own
process so its peak RSS is its own; see bench/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.child_process import RESULT_MARK, print_marked, run_child  # noqa: E402
from bench.host_info import cpu_description, load_average  # noqa: E402
from bench.summary import summarize_throughput  # noqa: E402

# name -> (hidden, layers); "full" is the published model.
FULL_SETTINGS = {
    "models": {"full": (1024, 5), "small": (256, 2)},
    # On the CPU every compiled graph keeps its own memory (full model: about 4 GB per training shape;
    # bench/memory_shapes.py), so each sampled batch runs in its own process and the full model
    # trains at batch 2 (a 17.5 s bucket then needs about 9 GB).
    "train": {"full": dict(batch_size=2, strata=4, repeats=2), "small": dict(batch_size=8, strata=4, repeats=2)},
    # Ours with batches sized by a frame budget (TrainingConfig.batch_frames): 3500 frames is the
    # longest bucket's batch of 2 above, so no sampled batch needs more memory than that one.
    "train_frames": {"full": dict(batch_size=2, batch_frames=3500, strata=4, repeats=2)},
    # Evaluation at batch 16: the full model's forward share of the matmul rate rises from 32% at
    # batch 4 to 53% at 16 and stays there at 32 (measured 2026-12-03); deepspeech2.yaml evaluates at 128.
    "eval": {"full": dict(batch_size=16, strata=4, repeats=2), "small": dict(batch_size=16, strata=4, repeats=2)},
    "rtf": {"full": dict(utterances=2, repeats=1), "small": dict(utterances=3, repeats=2)},
    "max_utterances": 0,
    "profile": dict(batch_size=2, frames=600, repeats=1),
    "scaling": dict(frames=300, batch_sizes=[1, 2, 4], repeats=1),
    "features": dict(seconds=60.0, repeats=5),
    "matmul": dict(size=2048, repeats=5),
    # configs/digits.yaml as it is; the median of 3 steps per shape, as a shape's first step after its
    # compile takes up to twice as long (one step per shape made the epoch 27-46 s instead of ~20 s).
    "digits": dict(strata_repeats=3),
}
QUICK_SETTINGS = {
    "models": {"full": (32, 1)},  # one tiny model in the "full" role: checks the code paths only
    "train": {"full": dict(batch_size=2, strata=2, repeats=1)},
    "train_frames": {"full": dict(batch_size=2, batch_frames=1760, strata=2, repeats=1)},
    "eval": {"full": dict(batch_size=4, strata=2, repeats=1)},
    "rtf": {"full": dict(utterances=1, repeats=1)},
    "max_utterances": 32,
    "profile": dict(batch_size=2, frames=200, repeats=1),
    "scaling": dict(frames=100, batch_sizes=[1, 2], repeats=1),
    "features": dict(seconds=10.0, repeats=2),
    "matmul": dict(size=512, repeats=2),
    "digits": dict(strata_repeats=1, hidden=32, layers=1),
}


def jobs(settings: Dict) -> List[tuple]:
    """(key, measure function, kwargs, processes) of every benchmark, cheapest first; a
    sampled-throughput benchmark runs each sampled batch in its own process (processes > 0)."""
    out = [("matmul", "matmul_rate", settings["matmul"], 0),
           ("features", "feature_speed", settings["features"], 0)]
    for model, (hidden, layers) in settings["models"].items():
        for baseline in (False, True):
            scheme = "baseline" if baseline else "ours"
            common = dict(hidden=hidden, layers=layers, baseline=baseline)
            for task, function in (("eval", "eval_throughput"), ("train", "train_throughput")):
                kwargs = dict(settings[task][model], max_utterances=settings["max_utterances"], **common)
                if baseline:
                    # Every baseline batch has the same shape: one sample, timed twice.
                    kwargs.update(strata=1, repeats=max(2, kwargs["repeats"]))
                out.append((f"{task}/{model}/{scheme}", function, kwargs, kwargs["strata"]))
            out.append((f"rtf/{model}/{scheme}", "transcription_rtf", dict(common, **settings["rtf"][model]), 0))
        if model in settings["train_frames"]:
            kwargs = dict(settings["train_frames"][model], max_utterances=settings["max_utterances"],
                          hidden=hidden, layers=layers, baseline=False)
            out.append((f"train/{model}/frames", "train_throughput", kwargs, kwargs["strata"]))
    hidden, layers = settings["models"]["full"]
    out.append(("profile/full", "step_profile", dict(hidden=hidden, layers=layers, **settings["profile"]), 0))
    out.append(("scaling/full", "batch_scaling", dict(hidden=hidden, layers=layers, **settings["scaling"]), 0))
    out.append(("digits", "digits_compile_share", settings["digits"], 0))
    return out


def run_job(function: str, kwargs: Dict, log) -> Optional[Dict]:
    """Run one benchmark in a fresh process; its result dict, or None if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps([function, kwargs])]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = run_child(command, cwd=REPO_ROOT, env=env)
    mark, result = run.first(RESULT_MARK)
    if mark is not None:
        return result
    log(f"  FAILED (exit {run.returncode}):\n{run.stderr_tail}")
    return None


def machine_info() -> Dict[str, str]:
    import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA as every benchmark process does)
    import numpy
    import scipy
    import librosa
    import mindspore

    cpu = cpu_description()
    try:
        mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        memory = f"{mem_kb / 2 ** 20:.1f} GiB"
    except (OSError, StopIteration):
        memory = "unknown"
    return {"cpu": cpu["cpu"], "cores": cpu["cores"], "isa": cpu["isa"], "memory": memory,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "mindspore": mindspore.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "librosa": librosa.__version__,
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def padding_overheads() -> Dict[str, tuple]:
    """Padded over real audio on the train-clean-5 and test-clean mixes for several schemes
    (each utterance padded to its bucket's upper edge; the original's pads to 12.5 s / 35 s and
    crops training clips, counted against the audio it keeps)."""
    import numpy as np

    from bench.workloads import read_lengths
    from mindaudio.config import TrainingConfig

    mixes = [read_lengths(split)[1] for split in ("train-clean-5", "test-clean")]

    def bucketed(durations, edges):
        edges = np.asarray(sorted(edges), dtype=np.float64)
        return float(edges[np.searchsorted(edges, durations)].sum() / durations.sum())

    default = list(TrainingConfig().bucket_boundaries) + [35.0]
    train, test = mixes
    return {
        "original: 1250 frames (crop) / 3500 frames": (
            12.5 * train.size / np.minimum(train, 12.5).sum(), 35.0 * test.size / test.sum()),
        "ours: default buckets (TrainingConfig.bucket_boundaries)": tuple(bucketed(m, default) for m in mixes),
        "buckets every 1 s": tuple(bucketed(m, np.arange(1.0, 35.5, 1.0)) for m in mixes),
        "buckets every 0.5 s": tuple(bucketed(m, np.arange(0.5, 35.25, 0.5)) for m in mixes),
    }


def _percent(value):
    return None if value is None else f"{100 * value:.1f}%"


def build_tables(results: Dict[str, Dict], settings: Dict) -> List[str]:
    """The markdown lines of the main table, the step profile and the FLOP counts."""
    from bench.flops import forward_flops_per_second

    get = lambda key, field: (results.get(key) or {}).get(field)  # noqa: E731
    limit = get("matmul", "limit_gflops")
    rows = []

    def ratio(ours, base, higher_is_better=True):
        if ours is None or base is None or base == 0 or ours == 0:
            return None
        return ours / base if higher_is_better else base / ours

    def efficiency(key):
        """A job's useful GFLOP/s over the matmul rate of the same run."""
        gflops = get(key, "achieved_gflops")
        return gflops / limit if gflops and limit else None

    def add_efficiency(figure, model_name, ours_key, base_key, target=None):
        """A row of two jobs' shares of the matmul rate; `target` is the share ours must reach (or None)."""
        ours_eff, base_eff = efficiency(ours_key), efficiency(base_key)
        add(figure, model_name, _percent(ours_eff), _percent(base_eff), ratio(ours_eff, base_eff),
            f">= {target:.0%}" if target else "", (ours_eff is not None and ours_eff >= target) if target else None)

    def add(figure, model, ours, base, r, target="", met=None, unit=""):
        mark = "" if met is None or ours is None else ("yes" if met else "no")
        rows.append(f"| {figure} | {model} | {_fmt(ours)}{unit} | {_fmt(base)}{unit} | "
                    f"{_fmt(r) + 'x' if r is not None else 'n/a'} | {target} | {mark} |")

    for model, (hidden, layers) in settings["models"].items():
        name = f"{model} H{hidden}x{layers}"
        ours, base = get(f"train/{model}/ours", "throughput"), get(f"train/{model}/baseline", "throughput")
        r = ratio(ours, base)
        add("training throughput, train-clean-5 mix (audio s/s)", name, ours, base, r,
            ">= 1.1x, nothing cropped" if model == "full" else "",
            (r is not None and r >= 1.1 and get(f"train/{model}/ours", "cropped_s") == 0) if model == "full" else None)
        add("  audio cropped away per epoch (s)", name, get(f"train/{model}/ours", "cropped_s"),
            get(f"train/{model}/baseline", "cropped_s"), None)
        add("  padded frames / audio frames", name, get(f"train/{model}/ours", "padded_over_audio"),
            get(f"train/{model}/baseline", "padded_over_audio"), None)
        add("  compile per input shape (s)", name, get(f"train/{model}/ours", "compile_per_shape_s"),
            get(f"train/{model}/baseline", "compile_per_shape_s"), None)
        add("  input shapes per epoch", name, get(f"train/{model}/ours", "shapes_in_epoch"),
            get(f"train/{model}/baseline", "shapes_in_epoch"), None)
        add("  peak RSS (MB)", name, get(f"train/{model}/ours", "peak_rss_mb"),
            get(f"train/{model}/baseline", "peak_rss_mb"), None)
        training_target = 0.6 if model == "full" else None
        training_efficiency = "  efficiency: useful GFLOP/s / matmul GFLOP/s"
        add_efficiency(training_efficiency, name, f"train/{model}/ours", f"train/{model}/baseline", training_target)
        frames = get(f"train/{model}/frames", "throughput")
        if frames is not None:
            budget = get(f"train/{model}/frames", "batch_frames")
            add(f"training throughput, ours with a frame budget of {budget} per batch (audio s/s)", name, frames,
                base, ratio(frames, base))
            add("  input shapes per epoch", name, get(f"train/{model}/frames", "shapes_in_epoch"), None, None)
            add("  peak RSS (MB)", name, get(f"train/{model}/frames", "peak_rss_mb"), None, None)
            add_efficiency(training_efficiency, name, f"train/{model}/frames", f"train/{model}/baseline",
                           training_target)
        data = get(f"train/{model}/ours", "data_cpu_s_per_audio_s")
        step = 1.0 / ours if ours else None
        add("  data pipeline CPU s / training s, per audio s", name,
            None if data is None or step is None else f"{data:.4f} / {step:.3f}", None, None,
            "data never the bottleneck" if model == "full" else "",
            (data is not None and step is not None and data < step) if model == "full" else None)
    for model, (hidden, layers) in settings["models"].items():
        name = f"{model} H{hidden}x{layers}"
        ours, base = get(f"eval/{model}/ours", "throughput"), get(f"eval/{model}/baseline", "throughput")
        r = ratio(ours, base)
        add("evaluation throughput, test-clean mix (audio s/s)", name, ours, base, r, ">= 4x",
            r is not None and r >= 4.0)
        add("  padded frames / audio frames", name, get(f"eval/{model}/ours", "padded_over_audio"),
            get(f"eval/{model}/baseline", "padded_over_audio"), None)
        add("  peak RSS (MB)", name, get(f"eval/{model}/ours", "peak_rss_mb"),
            get(f"eval/{model}/baseline", "peak_rss_mb"), None)
        batch = (settings["eval"].get(model) or {}).get("batch_size")
        add_efficiency(f"  efficiency at batch {batch}: useful GFLOP/s / matmul GFLOP/s", name, f"eval/{model}/ours",
                       f"eval/{model}/baseline", 0.7 if model == "full" else None)
    for model, (hidden, layers) in settings["models"].items():
        name = f"{model} H{hidden}x{layers}"
        ours, base = get(f"rtf/{model}/ours", "rtf"), get(f"rtf/{model}/baseline", "rtf")
        add("transcription real-time factor, batch 1 (lower is better)", name, ours, base,
            ratio(ours, base, higher_is_better=False))
    ours, base = get("features", "ours_x_realtime"), get("features", "librosa_x_realtime")
    r = ratio(ours, base)
    add("feature extraction (x real time per core)", "-", ours, base, r, ">= 500x",
        ours is not None and ours >= 500)
    add("  reading the WAV + our features (x real time per core)", "-",
        get("features", "read_and_ours_x_realtime"), None, None)
    add("  max |ours - librosa| (normalised features)", "-",
        None if get("features", "max_abs_diff") is None else f"{get('features', 'max_abs_diff'):.2e}", None, None)
    share = get("digits", "compile_share")
    digits = settings["digits"]
    recipe = f"digits H{digits['hidden']}x{digits['layers']}" if digits.get("hidden") else "configs/digits.yaml"
    add("graph compilation share of the digits recipe's first epoch, cold (no compile cache)", recipe,
        None if share is None else f"{100 * share:.1f}%", None, None)
    run_share = get("digits", "run_compile_share")
    add(f"  of a whole run of the recipe ({get('digits', 'epochs')} epochs), cold", recipe,
        None if run_share is None else f"{100 * run_share:.1f}%", None, None, "<= 5%",
        run_share is not None and run_share <= 0.05)
    add("fp32 matmul GFLOP/s (MindSpore / numpy)", "-",
        get("matmul", "mindspore_gflops"), get("matmul", "numpy_gflops"), None)
    header = ["| figure | model | ours | baseline (original's scheme) | ours vs baseline | target | met |",
              "|---|---|---|---|---|---|---|"]
    lines = header + rows

    prof = results.get("profile/full")
    if prof:
        hidden, layers = settings["models"]["full"]
        lines += ["", f"Where a training step's time goes (H{hidden}x{layers}, ours, batch "
                      f"{prof['batch_size']} x {prof['frames']} frames, each part run alone):", "",
                  "| part | forward (s) | backward (s) | forward + backward (s) | share of step |",
                  "|---|---|---|---|---|"]
        step = prof["step_s"]
        for part in ("conv", "lstm", "fc+ctc"):
            forward, both = prof[part + "_forward_s"], prof[part + "_fwd_bwd_s"]
            lines.append(f"| {part} | {forward:.3f} | {both - forward:.3f} | {both:.3f} | "
                         f"{100 * both / step:.0f}% |")
        lines.append(f"| optimizer (clip + Adam, {prof['parameters'] / 1e6:.1f} M parameters) | | | "
                     f"{prof['optimizer_s']:.3f} | {100 * prof['optimizer_s'] / step:.0f}% |")
        parts = sum(prof[p + "_fwd_bwd_s"] for p in ("conv", "lstm", "fc+ctc")) + prof["optimizer_s"]
        lines.append(f"| sum of parts | | | {parts:.3f} | {100 * parts / step:.0f}% |")
        lines.append(f"| whole step | | | {step:.3f} | 100% |")
        lines.append(f"| data (features of the batch; CPU, overlapped by workers) | | | {prof['data_cpu_s']:.3f} | "
                     f"{100 * prof['data_cpu_s'] / step:.1f}% |")
    scaling = results.get("scaling/full")
    if scaling:
        hidden, layers = settings["models"]["full"]
        lines += ["", f"Training step against batch size (H{hidden}x{layers}, ours, {scaling['frames']} frames, "
                      f"random features; matmul limit {_fmt(limit)} GFLOP/s):", "",
                  "| batch | step (s) | audio s/s | useful GFLOP/s | share of matmul rate |", "|---|---|---|---|---|"]
        for row in scaling["rows"]:
            share = f"{100 * row['gflops'] / limit:.1f}%" if limit else "n/a"
            lines.append(f"| {row['batch_size']} | {row['step_s']:.3f} | {row['audio_s_per_s']:.2f} | "
                         f"{row['gflops']:.1f} | {share} |")
    lines += ["", "Padding overhead (padded frames / real frames) of bucketing schemes, computed from the "
                  "length listings (no timing):", "",
              "| scheme | train-clean-5 | test-clean |", "|---|---|---|"]
    for name, values in padding_overheads().items():
        lines.append(f"| {name} | {values[0]:.3f} | {values[1]:.3f} |")
    lines += ["", "Model FLOPs per second of audio (multiply-adds x 2 of convolutions, LSTM products and "
                  "classifier; training = 3 x forward):", ""]
    for model, (hidden, layers) in settings["models"].items():
        parts = forward_flops_per_second(hidden, layers, 29)
        lines.append(f"- {model} H{hidden}x{layers}: forward {parts['total'] / 1e9:.2f} GFLOP "
                     f"(conv {parts['conv'] / 1e9:.2f}, LSTM {parts['lstm'] / 1e9:.2f}, "
                     f"classifier {parts['fc'] / 1e9:.4f}); training {3 * parts['total'] / 1e9:.2f} GFLOP")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that everything runs")
    parser.add_argument("--out", default=None, help="markdown output (default bench/RESULTS.md, "
                                                    "bench/RESULTS-quick.md with --quick)")
    parser.add_argument("--only", default="", help="comma-separated job-name prefixes to run, e.g. train/full")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.job:
        function, kwargs = json.loads(args.job)
        from bench import measure

        result = getattr(measure, function)(**kwargs)
        print_marked(RESULT_MARK, result)
        return 0

    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    out = Path(args.out) if args.out else REPO_ROOT / "bench" / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    raw_path = out.with_suffix(".json")
    selected = [job for job in jobs(settings)
                if not args.only or any(job[0].startswith(p) for p in args.only.split(","))]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    results: Dict[str, Dict] = {}
    wall = time.perf_counter()
    log = lambda text: print(text, flush=True)  # noqa: E731
    for index, (key, function, kwargs, processes) in enumerate(selected, 1):
        print(f"[{index}/{len(selected)}] {key} ...", flush=True)
        start = time.perf_counter()
        if processes:
            parts = [run_job(function, dict(kwargs, pick=pick), log) for pick in range(processes)]
            parts = [part for part in parts if part is not None]
            result = summarize_throughput(parts) if parts else None
        else:
            result = run_job(function, kwargs, log)
        if result is not None:
            result["wall_s"] = time.perf_counter() - start
            results[key] = result
            print(f"  done in {result['wall_s']:.0f} s", flush=True)
    wall = time.perf_counter() - wall

    info = machine_info()
    command = "python bench/run.py" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    lines = [f"# DeepSpeech2 benchmarks{' (quick settings: not representative)' if args.quick else ''}", "",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; command: `{command}`; wall time {wall / 60:.1f} min",
             f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; {info['os']}",
             f"- CPU vector ISA flags: {info['isa']}",
             f"- versions: Python {info['python']}, MindSpore {info['mindspore']}, numpy {info['numpy']}, "
             f"scipy {info['scipy']}, librosa {info['librosa']}; ONEDNN_MAX_CPU_ISA={info['ONEDNN_MAX_CPU_ISA']}",
             f"- load average (1/5/15 min) before: {load_before}, after: {load_average()}",
             "- baseline: the original MindAudio scheme in our code (`TrainingConfig.fixed_frames: 1250`, "
             "`EvalConfig.fixed_frames: 3500`, `ModelConfig.masked: false`); ours: the defaults "
             "(length buckets, masked LSTM, nothing cropped).", ""]
    lines += build_tables(results, settings)
    lines += ["", f"Raw measurements: `{raw_path.name}`."]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out.write_text(text)
    raw_path.write_text(json.dumps({"settings": settings, "results": results}, indent=1, default=str) + "\n")
    print(f"written {out} and {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
