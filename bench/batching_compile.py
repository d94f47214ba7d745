"""Batches by count against batches by frames, and compile time cold against warm (the compile cache),
for the digits recipe's small model on the bundled corpus, in one run.

    python bench/batching_compile.py                 # configs/digits.yaml, budget 1008 frames
    python bench/batching_compile.py --budget 2000   # another frame budget
    python bench/batching_compile.py --quick         # a tiny model and 12 batches per scheme
    python bench/batching_compile.py --json          # also print the raw numbers as JSON

For each scheme (count: `TrainingConfig.batch_size` of the recipe; frames: `--TrainingConfig.
batch_frames BUDGET`) a fresh process plans epoch 2 of the recipe's training split (shuffled, as
every epoch after SortaGrad's), builds the model and update as the trainer does, compiles every
training and validation shape through `mindaudio.training.precompile` into an empty compile cache
(cold), computes every batch's features (timed apart: the data pipeline), then runs every batch of
the epoch through the real update (forward, backward, clipping, Adam) and the validation split
through the model. A second fresh process per scheme compiles the same graphs again from that
cache (warm). Columns:
- batches, shapes: optimizer steps per epoch and distinct (batch, frames) input shapes;
- padded / real: padded frames over the utterances' real frames;
- train s: all steps of the epoch, compile excluded; audio s/s: audio seconds trained per second;
- compile cold / warm: training + validation graphs, through the cache, empty and filled;
- share cold / warm: compile over (compile + the epoch's steps + one validation pass): the
  compile share of the recipe's first epoch;
- run share cold: compile over (compile + `TrainingConfig.epochs` such epochs): the compile share
  of a whole run of the recipe into an empty cache.
Everything runs on the machine as it is: compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.child_process import RESULT_MARK, print_marked, run_child  # noqa: E402
from bench.host_info import cpu_line, load_average  # noqa: E402
from bench.process_memory import peak_rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "digits.yaml"


def _child(args) -> dict:
    import mindaudio  # noqa: F401  (before mindspore)
    import mindspore as ms
    from mindspore import Tensor

    from mindaudio.config import load_config
    from mindaudio.data.dataset import PaddedBatchSource, load_split, make_sampler
    from mindaudio.data.features import hop_size
    from mindaudio.data.text import CharTokenizer
    from mindaudio.models.build import build_model
    from mindaudio.models.deepspeech2 import output_length
    from mindaudio.training.precompile import precompile
    from mindaudio.training.train_step import build_update

    config = load_config(str(RECIPE))
    if args.quick:
        config.ModelConfig.hidden_size, config.ModelConfig.hidden_layers = 32, 1
    train = config.TrainingConfig
    tokenizer = CharTokenizer.from_config(config)
    spect = config.SpectConfig
    train_split = load_split(args.train_manifest, tokenizer, spect, bucket_boundaries=train.bucket_boundaries,
                             max_duration=train.max_duration, output_frames=output_length)
    val_split = load_split(args.val_manifest, tokenizer, spect, bucket_boundaries=train.bucket_boundaries)
    budget = args.budget if args.scheme == "frames" else 0
    sampler = make_sampler(train_split, train.batch_size, train=True, batch_frames=budget, seed=train.seed,
                           sortagrad=train.sortagrad)
    plan = sampler.batches(1)
    if args.quick:
        plan = plan[:12]
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = build_model(config, seed=1)
    update = build_update(model, config.OptimConfig)
    start = time.perf_counter()
    reports = precompile(args.cache_dir, config, 1, update, model, train_split, plan, val_split, log=lambda _: None)
    compile_s = time.perf_counter() - start
    result = {"scheme": args.scheme, "phase": args.phase, "budget": budget, "compile_s": compile_s,
              "graphs": sum(report.graphs for report in reports),
              "cache_hits": [report.hit for report in reports],
              "cache_reasons": [report.reason for report in reports],
              "batch_sizes": list(sampler.batch_size) if budget else train.batch_size, "epochs": train.epochs}
    if args.phase == "warm":
        return result

    start = time.process_time()
    source = PaddedBatchSource(train_split, spect, plan, tokenizer.blank_id)
    arrays = [source[i][:4] for i in range(len(plan))]
    data_cpu_s = time.process_time() - start
    val_plan = make_sampler(val_split, config.EvalConfig.batch_size, train=False).batches(0)
    val_source = PaddedBatchSource(val_split, spect, val_plan, tokenizer.blank_id)
    val_arrays = [val_source[i][:2] for i in range(len(val_plan))]

    start = time.perf_counter()
    for batch in arrays:
        update.add_micro_batch(*(Tensor(a) for a in batch))
        update.finish()
    train_s = time.perf_counter() - start
    model.set_train(False)
    start = time.perf_counter()
    for features, lengths in val_arrays:
        model(Tensor(features), Tensor(lengths))[0].asnumpy()
    val_s = time.perf_counter() - start

    seconds_per_frame = hop_size(spect) / spect.sample_rate
    real_frames = int(sum(batch[1].sum() for batch in arrays))
    padded_frames = int(sum(batch[0].shape[0] * batch[0].shape[3] for batch in arrays))
    result.update(batches=len(plan), shapes=len({(b[0].shape[0], b[0].shape[3]) for b in arrays}),
                  utterances=int(sum(b[0].shape[0] for b in arrays)), real_frames=real_frames,
                  padded_frames=padded_frames, audio_s=real_frames * seconds_per_frame, train_s=train_s,
                  val_s=val_s, data_cpu_s=data_cpu_s,
                  peak_rss_mb=peak_rss_mb())
    return result


def _run_child(argv) -> dict:
    """One scheme and phase in a fresh process (its own compile cache state and peak RSS): its result."""
    run = run_child([sys.executable, os.path.abspath(__file__), *argv], cwd=REPO)
    mark, result = run.first(RESULT_MARK)
    if mark is not None:
        return result
    raise SystemExit(f"benchmark child failed (exit {run.returncode}):\n{run.stderr_tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=1008,
                        help="frame budget of the frames scheme (default 16 x 63: the recipe's batch of 16 "
                             "at its most common bucket's padding)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 12 batches per scheme")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scheme", default="count", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="cold", help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--train_manifest", default="", help=argparse.SUPPRESS)
    parser.add_argument("--val_manifest", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print_marked(RESULT_MARK, _child(args))
        return 0

    from mindaudio.data.digits import prepare_digits

    load_before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ds2bench_") as tmp:
        manifests = {split.split: split.manifest for split in prepare_digits(Path(tmp), verbose=False).splits}
        common = ["--child", "--budget", str(args.budget), "--train_manifest", str(manifests["train"]),
                  "--val_manifest", str(manifests["val"])] + (["--quick"] if args.quick else [])
        rows = {}
        for scheme in ("count", "frames"):
            cache = os.path.join(tmp, f"cache-{scheme}")
            cold = _run_child(common + ["--scheme", scheme, "--phase", "cold", "--cache_dir", cache])
            warm = _run_child(common + ["--scheme", scheme, "--phase", "warm", "--cache_dir", cache])
            rows[scheme] = (cold, warm)
    load_after = load_average()

    print(f"digits recipe ({'tiny model, 12 batches' if args.quick else 'configs/digits.yaml'}), "
          f"epoch 2's plan; CPU: {cpu_line()}")
    print(f"load average before {load_before}, after {load_after}; {time.perf_counter() - started:.0f} s in all")
    header = ("| scheme | batch sizes | batches | shapes | padded / real | train s | audio s/s | "
              "compile cold s | compile warm s | share cold | share warm | run share cold |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for scheme, (cold, warm) in rows.items():
        epoch = cold["train_s"] + cold["val_s"]
        sizes = (f"{cold['batch_sizes']}" if scheme == "count"
                 else f"{args.budget} frames: " + "/".join(str(size) for size in cold["batch_sizes"]))
        print(f"| {scheme} | {sizes} | {cold['batches']} | {cold['shapes']} | "
              f"{cold['padded_frames'] / cold['real_frames']:.3f} | {cold['train_s']:.1f} | "
              f"{cold['audio_s'] / cold['train_s']:.1f} | {cold['compile_s']:.1f} | {warm['compile_s']:.1f} | "
              f"{cold['compile_s'] / (cold['compile_s'] + epoch):.0%} | "
              f"{warm['compile_s'] / (warm['compile_s'] + epoch):.0%} | "
              f"{cold['compile_s'] / (cold['compile_s'] + cold['epochs'] * epoch):.1%} |")
    count, frames = rows["count"][0], rows["frames"][0]
    speedup = (frames["audio_s"] / frames["train_s"]) / (count["audio_s"] / count["train_s"])
    print(f"frames / count throughput: {speedup:.2f}x; warm cache hits: "
          + ", ".join(f"{scheme} {all(warm['cache_hits'])}" for scheme, (_, warm) in rows.items()))
    if args.json:
        print(json.dumps({scheme: {"cold": cold, "warm": warm} for scheme, (cold, warm) in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
