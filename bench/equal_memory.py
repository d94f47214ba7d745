"""Training throughput of ours and the original's scheme at an equal memory budget: each scheme at
the largest batch whose whole epoch trains within --budget_gb of resident memory.

    python bench/equal_memory.py                  # full model, 12 GB (about 12 minutes on 2 cores)
    python bench/equal_memory.py --quick          # tiny model, 2 GB: checks that it runs
    python bench/equal_memory.py --out bench/equal_memory.md   # writes the table, the raw numbers beside it
    python bench/equal_memory.py --budget_gb 16 --baseline_sizes 6,7 --ours_sizes 5000   # other budget, sizes

Each scheme trains as a real run would, every input shape of its epoch in one process:
- baseline, the original's scheme: every batch padded to 1250 frames (longer clips cropped), the
  LSTM unmasked, batches of B utterances: one compiled shape;
- ours: length buckets, masked LSTM, nothing cropped, batches sized by a budget of N padded frames
  (`TrainingConfig.batch_frames`) and `RuntimeConfig.dynamic_shapes: True`, one graph for the
  epoch's 8 bucket shapes. With static shapes every compiled shape keeps its own memory (about 4 GB
  per full-model training shape, bench/memory_shapes.py), so no batch size trains the full model's
  epoch within 12 GB that way;
- ours_one_graph (`--schemes baseline,ours,ours_one_graph`), an estimate and not a training mode: what
  training would reach with one static graph alive at a time (the batches of one length bucket in a
  row, the previous bucket's graph freed): ours with static shapes, the epoch's largest batch and each
  sampled batch in its own process; memory is the highest of their peaks. The recompiles and first-step
  allocations at each change of bucket (8 per epoch) are not counted.

Sizes are tried from the smallest up, each in a fresh process that first compiles and runs the
epoch plan's batch with the most padded frames (the one that needs the most memory), then times a
stratified sample of the epoch as bench/run.py's training figure does (`train_throughput` in
bench/measure.py; throughput = audio the model sees in the epoch / the estimated epoch time, the
baseline's cropped clips counting 12.5 s). A watchdog ends the process as soon as its RSS passes
the budget; a size fits when its processes finished with peak RSS within the budget. A scheme's
search stops at its first size that does not fit; the ratio compares the two schemes' largest
fitting sizes. The machine may be shared: compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mindaudio  # noqa: E402,F401  (sets ONEDNN_MAX_CPU_ISA, inherited by the processes it runs)
from bench.child_process import RESULT_MARK, print_marked, run_child  # noqa: E402
from bench.host_info import cpu_line, load_average  # noqa: E402
from bench.process_memory import STOP_MARK, watch_rss  # noqa: E402
from bench.summary import summarize_throughput  # noqa: E402

TARGET_RATIO = 1.4
# (hidden, layers), budget GB, sizes tried per scheme (baseline: utterances per batch; ours: frame
# budget per batch, the first being bench/run.py's 3500), sampling, utterances of the mix (0: all).
SCHEMES = ("baseline", "ours", "ours_one_graph")
FULL = dict(model=(1024, 5), budget_gb=12.0, baseline_sizes=[2, 4, 6, 8, 10, 12, 14, 16],
            ours_sizes=[3500, 4500, 5000, 5500, 6500, 8000], ours_one_graph_sizes=[6000, 8000, 10000, 12000],
            strata=4, repeats=1, max_utterances=0)
QUICK = dict(model=(32, 1), budget_gb=2.0, baseline_sizes=[1, 2, 4], ours_sizes=[1760, 3500, 7000],
             ours_one_graph_sizes=[1760, 3500],
             strata=2, repeats=1, max_utterances=32)


def run_kwargs(settings: Dict, scheme: str, size: int) -> List[Dict]:
    """`train_throughput`'s arguments for one scheme at one size, one dict per process."""
    hidden, layers = settings["model"]
    common = dict(hidden=hidden, layers=layers, max_utterances=settings["max_utterances"], largest_first=True)
    if scheme == "baseline":
        # One shape: every batch is alike, so one sampled batch timed twice.
        return [dict(common, baseline=True, batch_size=size, strata=1, repeats=max(2, settings["repeats"]))]
    ours = dict(common, baseline=False, batch_size=2, batch_frames=size, strata=settings["strata"],
                repeats=settings["repeats"])
    if scheme == "ours":
        return [dict(ours, dynamic_shapes=True)]
    # ours_one_graph: static shapes, one alive at a time: the largest batch alone (strata 0), then
    # each sampled batch in its own process.
    return ([dict(ours, strata=0)]
            + [dict(ours, largest_first=False, pick=pick) for pick in range(settings["strata"])])


def child(kwargs: Dict, budget_mb: float) -> None:
    """Run one size in this process under the RSS watchdog and print its result."""
    watch_rss(budget_mb, lambda: "while training")
    from bench.measure import train_throughput

    print_marked(RESULT_MARK, train_throughput(**kwargs))


def run_process(kwargs: Dict, budget_mb: float) -> Dict:
    """`train_throughput(**kwargs)` in a fresh process under the watchdog: its result, or
    {"stopped": why} when the watchdog ended it."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(kwargs), "--budget_mb",
               str(budget_mb)]
    run = run_child(command, cwd=REPO, text_marks=(STOP_MARK,))
    mark, payload = run.first(RESULT_MARK, STOP_MARK)
    if mark == RESULT_MARK:
        return payload
    if mark == STOP_MARK:
        return {"stopped": payload}
    raise RuntimeError(f"bench/equal_memory.py: a size failed (exit {run.returncode}):\n{run.stderr_tail}")


def measure_size(processes: List[Dict], budget_mb: float) -> Dict:
    """One size, its processes in turn: the summarised throughput of their samples, the largest
    batch and the highest peak RSS; or why it did not fit (the first process the watchdog ended)."""
    parts = []
    for kwargs in processes:
        part = run_process(kwargs, budget_mb)
        if "stopped" in part:
            return {"fits": False, "stopped": part["stopped"]}
        parts.append(part)
    summary = summarize_throughput([part for part in parts if part["samples"]])
    peak = max(part["peak_rss_mb"] for part in parts)
    summary.update(largest=next(part["largest"] for part in parts if part["largest"]), peak_rss_mb=peak,
                   processes=len(parts), fits=peak <= budget_mb)
    return summary


def search(settings: Dict, scheme: str, log) -> List[Dict]:
    """Every size tried for `scheme`, smallest first, up to and including the first that does not fit."""
    budget_mb = settings["budget_gb"] * 1024
    rows = []
    for size in settings[f"{scheme}_sizes"]:
        start = time.perf_counter()
        row = dict(measure_size(run_kwargs(settings, scheme, size), budget_mb), scheme=scheme, size=size,
                   wall_s=time.perf_counter() - start)
        rows.append(row)
        log(f"  {scheme} {size}: " + (f"{row['throughput']:.2f} audio s/s, peak {row['peak_rss_mb']:,.0f} MB"
                                      if "throughput" in row else row["stopped"]) + f" ({row['wall_s']:.0f} s)")
        if not row["fits"]:
            break
    return rows


def largest_fitting(rows: List[Dict]) -> Optional[Dict]:
    fitting = [row for row in rows if row["fits"]]
    return fitting[-1] if fitting else None


def table(rows: List[Dict], budget_gb: float) -> List[str]:
    lines = [f"| scheme | size | largest batch (utterances x frames) | shapes in epoch | peak RSS (MB) | "
             f"fits {budget_gb:g} GB | audio s/s | compile (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        size = f"batch {row['size']}" if row["scheme"] == "baseline" else f"{row['size']} frames"
        if "throughput" not in row:
            lines.append(f"| {row['scheme']} | {size} | | | over ({row['stopped']}) | no | | |")
            continue
        largest = row["largest"]
        lines.append(f"| {row['scheme']} | {size} | {largest['utterances']} x {largest['frames']} | "
                     f"{row['shapes_in_epoch']} | {row['peak_rss_mb']:,.0f} | {'yes' if row['fits'] else 'no'} | "
                     f"{row['throughput']:.2f} | {largest['compile_s']:.1f} |")
    return lines


def verdict(scheme: str, ours: Optional[Dict], base: Optional[Dict]) -> str:
    if ours is None or base is None:
        return f"{scheme}: it or the baseline has no size that fits: no ratio"
    ratio = ours["throughput"] / base["throughput"]
    return (f"{scheme} at {ours['size']} frames per batch: {ours['throughput']:.2f} audio s/s; the original's scheme "
            f"at batch {base['size']}: {base['throughput']:.2f} audio s/s; {scheme} / baseline {ratio:.2f}x "
            f"(target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'not met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and budget: checks that it runs")
    parser.add_argument("--out", default="",
                        help="write the table to this .md file and the raw numbers beside it (.json)")
    parser.add_argument("--budget_gb", type=float, default=0.0, help="memory budget (default 12, --quick 2)")
    parser.add_argument("--schemes", default="baseline,ours", help=f"which of {','.join(SCHEMES)} to run")
    parser.add_argument("--baseline_sizes", default="", help="comma-separated batch sizes to try instead")
    parser.add_argument("--ours_sizes", default="", help="comma-separated frame budgets to try instead")
    parser.add_argument("--ours_one_graph_sizes", default="", help="comma-separated frame budgets to try instead")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--budget_mb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child), args.budget_mb)
        return 0
    settings = dict(QUICK if args.quick else FULL)
    if args.budget_gb:
        settings["budget_gb"] = args.budget_gb
    schemes = args.schemes.split(",")
    unknown = sorted(set(schemes) - set(SCHEMES))
    if unknown:
        parser.error(f"unknown scheme(s) {', '.join(unknown)}: choose from {', '.join(SCHEMES)}")
    for scheme in SCHEMES:
        chosen = getattr(args, f"{scheme}_sizes")
        if chosen:
            settings[f"{scheme}_sizes"] = [int(size) for size in chosen.split(",")]
    log = lambda text: print(text, flush=True)  # noqa: E731
    load_before, started = load_average(), time.perf_counter()
    rows = []
    for scheme in schemes:
        log(f"{scheme}: sizes {settings[f'{scheme}_sizes']} ...")
        rows += search(settings, scheme, log)
    best = {scheme: largest_fitting([row for row in rows if row["scheme"] == scheme]) for scheme in schemes}
    hidden, layers = settings["model"]
    command = " ".join(["python bench/equal_memory.py", *sys.argv[1:]])
    lines = [f"# `{command}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: DeepSpeech2 H{hidden}x{layers} training on the "
             f"train-clean-5 length mix, each scheme's whole epoch in one process within "
             f"{settings['budget_gb']:g} GB of resident memory",
             f"CPU: {cpu_line()}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}",
             f"load average before {load_before}, after {load_average()}; "
             f"{(time.perf_counter() - started) / 60:.1f} min in all", ""]
    lines += table(rows, settings["budget_gb"]) + [""]
    lines += [verdict(scheme, best[scheme], best.get("baseline")) for scheme in schemes if scheme != "baseline"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"command": command, "settings": settings, "rows": rows,
                                                        "cpu": cpu_line()}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
