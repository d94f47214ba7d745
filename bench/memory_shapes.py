"""Resident memory against the number of compiled input shapes of a training step.

    python bench/memory_shapes.py                               # full model, budget 1200, 6 shapes, main variants
    python bench/memory_shapes.py --variants default,repeat     # chosen variants
    python bench/memory_shapes.py --hidden 256 --layers 2       # the small model
    python bench/memory_shapes.py --quick                       # tiny model, budget 600, 3 shapes: checks that it runs

Each variant runs in ONE fresh process: it builds the model and the trainer's update
(`build_update`, default `OptimConfig`), then for K input shapes in sequence compiles the update's
forward+backward graph (`update.accumulate.compile`) and runs training steps on that shape
(`add_micro_batch` + `finish`: forward, backward, clipping, Adam). The K shapes share a frame
budget: batch 1, 2, 3, ... utterances of budget // batch frames (none over 17.5 s), so every shape
has about the same batch x frames (as `TrainingConfig.batch_frames` plans batches) and about the same
activation memory; with memory kept per shape, resident memory grows by about the same amount per shape.
Features are random, label lengths frames // 8 (memory and time do not depend on the values).

Variants (the MindSpore setting each one changes, set before the model is built):
- default: nothing changed (training with `RuntimeConfig.dynamic_shapes` false, the default);
- repeat: the first shape K times (the baseline: one compiled shape);
- mem_O1: `ms.set_context(memory_optimize_level="O1")` (memory over speed);
- jit_O0 / jit_O1: the update's cells compiled at that `JitConfig(jit_level=...)`;
- recycle: `ms.ms_memory_recycle()` and `gc.collect()` after each shape's steps (frees the memory
  MindSpore keeps for compiled graphs, which are then compiled again if a shape comes back);
- drop: after each shape's steps its graph is deleted (`del_net_res` of that compile phase of
  `update.accumulate` only; the optimizer graph stays): at most one training shape compiled at a time;
- dynamic: one graph for every shape (`build_update(..., dynamic_shapes=True)`: `Cell.set_inputs`
  with the batch, frame and label axes None; `RuntimeConfig.dynamic_shapes` in training);
- pool_cap: `ms.runtime.set_memory(max_size=...)` at --pool_cap GB.

Columns, one row per shape (after that shape's compile, then after its steps):
- shapes: how many distinct shapes have been compiled so far; batch x frames: the shape;
- compile s: `accumulate.compile` (0 for dynamic after the first: nothing to compile);
- step s: wall time of the first step on the shape (allocates the graph's memory) / the next ones;
- step CPU s: the same steps' CPU time of the process (all its threads): on a shared machine it
  leaves out waiting for a core, so it compares variants better than wall time;
- RSS MB: current resident memory (VmRSS) after the compile and after the steps;
- peak MB: the process's peak resident memory so far (ru_maxrss);
- +MB: growth of current RSS over this shape (after its steps minus before its compile).
A watchdog thread ends a variant's process as soon as its RSS passes --max_rss_gb (default 12): the
table then lists the shapes it finished and says where it stopped.
The machine may be shared: compare variants of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.child_process import RESULT_MARK, print_marked, run_child  # noqa: E402
from bench.process_memory import STOP_MARK, peak_rss_mb, rss_mb, watch_rss  # noqa: E402

ROW_MARK = "ROW "
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "repeat", "mem_O1", "jit_O0", "jit_O1", "recycle", "drop", "dynamic", "pool_cap")
DEFAULT_VARIANTS = "repeat,default,mem_O1,drop,dynamic"
# No shape longer than this (17.5 s: the train-clean-5 mix's longest clip is 17.3 s).
MAX_FRAMES = 1750


def shape_plan(budget: int, count: int):
    """`count` distinct (batch, frames) shapes of batch x frames = `budget` (to within one batch):
    batch 1, 2, 3, ... at budget // batch frames, skipping shapes longer than MAX_FRAMES."""
    shapes, batch = [], 1
    while len(shapes) < count:
        frames = budget // batch
        if frames < 16:
            raise SystemExit(f"budget {budget} has too few frames for {count} shapes")
        if frames <= MAX_FRAMES:
            shapes.append((batch, frames))
        batch += 1
    return shapes


def random_batch(rng, batch: int, frames: int, freq: int, classes: int):
    """(features (B, 1, F, T) float32, lengths (B,) int32 = T, labels (B, T // 8) int32, label lengths)."""
    import numpy as np
    from mindspore import Tensor

    label_len = max(1, frames // 8)
    return (Tensor(rng.standard_normal((batch, 1, freq, frames), dtype=np.float32)),
            Tensor(np.full(batch, frames, np.int32)),
            Tensor(rng.integers(0, classes - 1, (batch, label_len)).astype(np.int32)),
            Tensor(np.full(batch, label_len, np.int32)))


def _child(args) -> dict:
    import gc

    import numpy as np

    import mindaudio  # noqa: F401  (before mindspore)
    import mindspore as ms
    from mindspore import Tensor
    from mindspore.graph.api import _cell_graph_executor

    from bench.measure import _timed, make_config
    from mindaudio.data.features import num_freq_bins
    from mindaudio.models.build import build_model
    from mindaudio.training.train_step import build_update

    variant = args.variant
    stage = ["while building the model"]
    watch_rss(args.max_rss_gb * 1024, lambda: stage[0])
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    if variant == "mem_O1":
        ms.set_context(memory_optimize_level="O1")
    if variant == "pool_cap":
        ms.runtime.set_memory(max_size=f"{args.pool_cap}GB")
    config = make_config(args.hidden, args.layers, baseline=False)
    freq = num_freq_bins(config.SpectConfig)
    classes = len(config.labels)
    start_rss = rss_mb()
    model = build_model(config, seed=1)
    update = build_update(model, config.OptimConfig, dynamic_shapes=variant == "dynamic")
    if variant in ("jit_O0", "jit_O1"):
        for cell in (update.accumulate, update.apply):
            cell.set_jit_config(ms.JitConfig(jit_level=variant[-2:]))
    one = Tensor(1.0, ms.float32)
    optimizer_compile_s = _timed(lambda: update.apply.compile(one))
    built_rss = rss_mb()

    def step(data):
        update.add_micro_batch(*data)
        update.finish()

    shapes = shape_plan(args.budget, args.shapes)
    if variant == "repeat":
        shapes = [shapes[0]] * len(shapes)
    rng = np.random.default_rng(0)
    rows = []
    for index, (batch, frames) in enumerate(shapes):
        stage[0] = f"at shape {index + 1} ({batch} x {frames})"
        data = random_batch(rng, batch, frames, freq, classes)
        before = rss_mb()
        phases = set(update.accumulate.compile_cache)
        compile_s = _timed(lambda: update.accumulate.compile(*data))
        new_phases = set(update.accumulate.compile_cache) - phases
        after_compile, peak_compile = rss_mb(), peak_rss_mb()
        steps, steps_cpu = [], []
        for _ in range(args.steps):
            cpu = time.process_time()
            steps.append(_timed(lambda: step(data)))
            steps_cpu.append(time.process_time() - cpu)
        if variant == "recycle":
            ms.ms_memory_recycle()
            gc.collect()
        if variant == "drop":
            _cell_graph_executor.del_net_res(update.accumulate, new_phases)
            update.accumulate.compile_cache.difference_update(new_phases)
            gc.collect()
        after_steps = rss_mb()
        row = {"index": index, "batch": batch, "frames": frames, "compile_s": compile_s,
               "steps_s": steps, "steps_cpu_s": steps_cpu, "rss_before_mb": before, "rss_compiled_mb": after_compile,
               "peak_compiled_mb": peak_compile, "rss_after_mb": after_steps, "peak_after_mb": peak_rss_mb()}
        rows.append(row)
        print_marked(ROW_MARK, row)
        print(f"[{variant}] shape {index + 1}: {batch} x {frames}: compile {compile_s:.1f} s, steps "
              + "/".join(f"{s:.1f}" for s in steps) + f" s, RSS {after_steps:,.0f} MB, peak {peak_rss_mb():,.0f} MB",
              file=sys.stderr, flush=True)
    return {"variant": variant, "hidden": args.hidden, "layers": args.layers, "budget": args.budget,
            "rss_start_mb": start_rss, "rss_built_mb": built_rss, "optimizer_compile_s": optimizer_compile_s,
            "fused_update": update.fused, "rows": rows}


def _run_child(argv) -> dict:
    run = run_child([sys.executable, os.path.abspath(__file__), *argv], cwd=REPO,
                    json_marks=(RESULT_MARK, ROW_MARK), text_marks=(STOP_MARK,), capture_stderr=False)
    mark, result = run.first(RESULT_MARK)
    if mark is not None:
        return result
    rows, stops = run.payloads(ROW_MARK), run.payloads(STOP_MARK)
    stopped = stops[-1] if stops else ""
    variant = argv[argv.index("--variant") + 1]
    if stopped:
        return {"variant": variant, "rows": rows, "stopped": stopped, "rss_start_mb": float("nan"),
                "rss_built_mb": float("nan")}
    return {"variant": variant, "error": f"exit {run.returncode}", "rows": rows}


def print_table(result: dict) -> None:
    variant = result["variant"]
    if result.get("error"):
        print(f"\n{variant}: failed ({result['error']}; its stderr is above)")
        return
    print(f"\n{variant}: RSS after import {result['rss_start_mb']:,.0f} MB, after building the model and "
          f"update and compiling the optimizer {result['rss_built_mb']:,.0f} MB")
    print("| shapes | batch x frames | compile s | step s (first / others) | step CPU s | RSS compiled MB | "
          "RSS after steps MB | peak MB | +MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for row in result["rows"]:
        seen.add((row["batch"], row["frames"]))
        steps = " / ".join(f"{s:.1f}" for s in row["steps_s"])
        cpu = " / ".join(f"{s:.1f}" for s in row.get("steps_cpu_s", []))
        print(f"| {len(seen) if variant != 'repeat' else 1} | {row['batch']} x {row['frames']} | "
              f"{row['compile_s']:.1f} | {steps} | {cpu} | {row['rss_compiled_mb']:,.0f} | "
              f"{row['rss_after_mb']:,.0f} | {row['peak_after_mb']:,.0f} | "
              f"{row['rss_after_mb'] - row['rss_before_mb']:+,.0f} |")
    if result.get("stopped"):
        print(f"(stopped: {result['stopped']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--budget", type=int, default=1200, help="batch x frames of every shape")
    parser.add_argument("--shapes", type=int, default=6, help="distinct shapes compiled in sequence")
    parser.add_argument("--steps", type=int, default=2, help="training steps per shape")
    parser.add_argument("--max_rss_gb", type=float, default=12.0,
                        help="end a variant's process as soon as its RSS passes this")
    parser.add_argument("--pool_cap", type=float, default=4.0, help="GB for the pool_cap variant")
    parser.add_argument("--quick", action="store_true", help="tiny model (H32x1), budget 600, 3 shapes")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.budget, args.shapes = 32, 1, 600, 3
    if args.child:
        print_marked(RESULT_MARK, _child(args))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")

    from bench.host_info import cpu_line, load_average

    load_before = load_average()
    started = time.perf_counter()
    common = ["--child", "--hidden", str(args.hidden), "--layers", str(args.layers), "--budget", str(args.budget),
              "--shapes", str(args.shapes), "--steps", str(args.steps),
              "--max_rss_gb", str(args.max_rss_gb), "--pool_cap", str(args.pool_cap)]
    results = [_run_child(common + ["--variant", variant]) for variant in variants]
    load_after = load_average()
    print(f"\nDeepSpeech2 H{args.hidden}x{args.layers} training step (build_update, default OptimConfig), "
          f"frame budget {args.budget} (batch x frames per shape), {args.shapes} shapes, {args.steps} steps each")
    print(f"CPU: {cpu_line()}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}")
    print(f"load average before {load_before}, after {load_after}; {time.perf_counter() - started:.0f} s in all")
    for result in results:
        print_table(result)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
