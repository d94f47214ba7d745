"""The optimizer update alone (global-norm clip + Adam + L2 weight decay + clearing the gradient
buffers) on the full model's parameters, against the memory traffic it cannot avoid.

    python bench/optimizer_update.py                # deepspeech2.yaml's model, 7 rounds
    python bench/optimizer_update.py --repeats 15   # raw numbers in bench/optimizer_update.json (--json)

Builds the model of the config (`build_model`; no data needed) and three updates of it as the
trainer builds them (`build_update`): MindSpore's composition as it was before the fused kernels
(`ApplyGradients` with `nn.Adam`: unscale, norm, clip, weight decay, Adam and clearing as separate
kernels, the norm as one ReduceSum per whole tensor; kept here as `ApplyGradientsBefore`), the same
with the norm's rows summed first (`ApplyGradients` now: the fallback without a C++ compiler), and
the fused one (`FusedApplyGradients`: a norm pass, then one pass doing the rest). Before every call the gradient
buffers are refilled with the same random values (untimed). Every round times each update and each
memory copy once (after one warm-up call each), so all rows see the same machine load. Reported:
median and best time over the rounds.

Bytes an ideal update must move (float32, N parameters, counted once per pass over a tensor):
the global norm must be known before any weight moves, so it reads the gradient buffers once
(4N); then one pass reads gradient, weight, first and second moment (16N) and writes weight and
both moments (12N) and the buffer's zeros (4N): 36N bytes in all (9 tensor passes). GB/s = those
bytes / time, for both variants (the composition really moves about 2.5 times that: 22 passes).

The memory-traffic limit: those bytes at the best memory-copy rate measured in the same run,
counting a copy of B bytes as 2B moved (read + write): numpy `copyto` of an N-float buffer into
another, numpy's in-place `x *= 1` over it (each element read and written back, the update's own
pattern), each on one thread and on every core (the buffer split between threads), and
MindSpore's `Assign` and `Tensor.copy_` of the parameters into the buffers; the limit's rate is
the copy with the highest median rate. "x limit" = time / (bytes / that rate), medians against
its median, bests against its best. A copy into another buffer also reads each destination line
before writing it (write-allocate), 1.5x the bytes counted, while the update writes only lines it
has read: so `copyto`'s rate understates the bus and the in-place rate is the fair limit.
The machine may be shared: compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import mindaudio  # noqa: E402,F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms  # noqa: E402
from mindspore import ParameterTuple, Tensor, nn, ops  # noqa: E402

from bench.host_info import cpu_description, load_average  # noqa: E402
from mindaudio.config import load_config  # noqa: E402
from mindaudio.models.build import build_model  # noqa: E402
from mindaudio.training.train_step import ApplyGradients, build_update  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BYTES_PER_FLOAT = 4
# Tensor passes of an ideal update: norm (read g); update (read g, w, m, v; write w, m, v, g).
IDEAL_PASSES = 9


class _CopyAll(nn.Cell):
    """Copies every tensor of `sources` into the same-shaped one of `targets` (Assign, or
    Tensor.copy_), returning a scalar so that no output is copied back."""

    def __init__(self, sources: ParameterTuple, targets: ParameterTuple, in_place: bool):
        super().__init__(auto_prefix=False)
        self.sources = sources
        self.targets = targets
        self.in_place = in_place
        self.hyper_map = ops.HyperMap()

    def construct(self):
        if self.in_place:
            done = self.hyper_map(_copy_in_place, self.targets, self.sources)
        else:
            done = self.hyper_map(_assign, self.targets, self.sources)
        return ops.depend(ops.zeros((), ms.float32), done)


_assign = ops.MultitypeFuncGraph("assign")
_copy_in_place = ops.MultitypeFuncGraph("copy_in_place")


@_assign.register("Tensor", "Tensor")
def _assign_fn(target, source):
    return ops.assign(target, source)


@_copy_in_place.register("Tensor", "Tensor")
def _copy_in_place_fn(target, source):
    return target.copy_(source)


_full_square_sum = ops.MultitypeFuncGraph("full_square_sum")


@_full_square_sum.register("Tensor")
def _full_square_sum_fn(x):
    return ops.square(x.astype(ms.float32)).sum()


class ApplyGradientsBefore(ApplyGradients):
    """`ApplyGradients` as it was before the fused update: the same, except that each tensor's
    sum of squares is one ReduceSum over the whole tensor (slow on CPU)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.square_sum = _full_square_sum


def numpy_copy(elements: int, threads: int, in_place: bool = False) -> Callable[[], None]:
    """A copy of `elements` float32 split over `threads` threads: `copyto` into another buffer,
    or (`in_place`) every element read and written back (x *= 1), the update's access pattern."""
    source = np.ones(elements, np.float32)
    target = source if in_place else np.zeros_like(source)
    bounds = np.linspace(0, elements, threads + 1).astype(np.int64)

    def part(i):
        if in_place:
            np.multiply(source[bounds[i]:bounds[i + 1]], np.float32(1), out=target[bounds[i]:bounds[i + 1]])
        else:
            np.copyto(target[bounds[i]:bounds[i + 1]], source[bounds[i]:bounds[i + 1]])

    def run():
        if threads == 1:
            part(0)
            return
        workers = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return run


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(config_path: str, repeats: int) -> Dict:
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config = load_config(config_path)
    optim = config.OptimConfig
    model = build_model(config, seed=1)
    before = build_update(model, optim, fused=False)
    before.apply = ApplyGradientsBefore(before.optimizer, before.accumulate.accumulators, optim.loss_scale,
                                        optim.max_grad_norm)
    fallback = build_update(model, optim, fused=False)
    updates = {"MindSpore composition, before (full-tensor ReduceSum norm)": before,
               "MindSpore composition (ApplyGradients + nn.Adam; the fallback)": fallback,
               "fused (FusedApplyGradients)": build_update(model, optim, fused=True)}
    weights = ParameterTuple(model.trainable_params())
    elements = int(sum(int(np.prod(p.shape)) for p in weights))
    rng = np.random.default_rng(0)
    # Gradients of the loss-scaled size the buffers hold after one micro-batch, copied into the
    # buffers by a graph (as the accumulation step writes them) before every timed call.
    gradients = ParameterTuple(
        [ms.Parameter(Tensor(rng.standard_normal(p.shape, dtype=np.float32) * np.float32(1e-2 * optim.loss_scale)),
                      name=f"random_gradient.{p.name}") for p in weights])
    fillers = {name: _CopyAll(gradients, update.accumulate.accumulators, in_place=True)
               for name, update in updates.items()}
    one = Tensor(1.0, ms.float32)

    def refill(name):
        fillers[name]().asnumpy()

    def call(update):
        return float(update.apply(one).asnumpy())

    stream_bytes = BYTES_PER_FLOAT * elements
    cores = os.cpu_count() or 1
    copies = {"numpy copyto, 1 thread": numpy_copy(elements, 1),
              f"numpy copyto, {cores} threads": numpy_copy(elements, cores),
              "numpy in place x *= 1, 1 thread": numpy_copy(elements, 1, in_place=True),
              f"numpy in place x *= 1, {cores} threads": numpy_copy(elements, cores, in_place=True)}
    accumulators = updates["fused (FusedApplyGradients)"].accumulate.accumulators
    assign, copy_ = _CopyAll(weights, accumulators, False), _CopyAll(weights, accumulators, True)
    copies["MindSpore Assign"] = lambda: assign().asnumpy()
    copies["MindSpore Tensor.copy_"] = lambda: copy_().asnumpy()

    times: Dict[str, List[float]] = {name: [] for name in updates}
    copy_times: Dict[str, List[float]] = {name: [] for name in copies}
    norms: Dict[str, float] = {}
    for fn in copies.values():  # compile + warm-up
        fn()
    for name, update in updates.items():
        refill(name)
        norms[name] = call(update)
    # Every round times everything once, so each row's median sees the same load.
    for _ in range(repeats):
        for name, fn in copies.items():
            copy_times[name].append(timed(fn))
        for name, update in updates.items():
            refill(name)
            times[name].append(timed(lambda: call(update)))
    cleared = all(not np.any(b.asnumpy()) for u in updates.values() for b in u.accumulate.accumulators)

    ideal_bytes = IDEAL_PASSES * stream_bytes
    copy_rates = {name: {"median": 2 * stream_bytes / float(np.median(ts)) / 1e9,
                         "best": 2 * stream_bytes / min(ts) / 1e9} for name, ts in copy_times.items()}
    best_copy = max(copy_rates, key=lambda name: copy_rates[name]["median"])
    limit_s = {stat: ideal_bytes / (copy_rates[best_copy][stat] * 1e9) for stat in ("median", "best")}
    variants = {}
    for name, ts in times.items():
        median, best = float(np.median(ts)), float(min(ts))
        variants[name] = {"median_s": median, "best_s": best, "gb_per_s": ideal_bytes / median / 1e9,
                          "x_limit": median / limit_s["median"], "x_limit_best": best / limit_s["best"],
                          "first_norm": norms[name], "times_s": ts}
    # Recorded relative to the repository, so the JSON reads the same on every checkout.
    shown = os.path.relpath(os.path.abspath(config_path), Path(__file__).resolve().parents[1])
    return {"config": shown, "parameters": elements, "tensors": len(weights), "repeats": repeats,
            "ideal_bytes": ideal_bytes, "ideal_passes": IDEAL_PASSES,
            "copy_gb_per_s": copy_rates, "copy_times_s": copy_times, "best_copy": best_copy,
            "limit_s": limit_s, "variants": variants, "buffers_cleared": cleared}


def table(result: Dict) -> str:
    gb = result["ideal_bytes"] / 1e9
    lines = [f"Optimizer update, {result['parameters'] / 1e6:.1f} M parameters in {result['tensors']} tensors "
             f"({result['config']}); ideal traffic {result['ideal_passes']} passes x "
             f"{result['ideal_bytes'] / result['ideal_passes'] / 1e6:.0f} MB = {gb:.2f} GB; "
             f"{result['repeats']} rounds", "",
             "| update | median s | best s | GB/s (ideal bytes / median) | x limit (medians) | x limit (bests) |",
             "|---|---|---|---|---|---|"]
    names = list(result["variants"])
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['median_s']:.3f} | {v['best_s']:.3f} | {v['gb_per_s']:.1f} | "
                     f"{v['x_limit']:.2f} | {v['x_limit_best']:.2f} |")
    first, last = result["variants"][names[0]], result["variants"][names[-1]]
    lines.append(f"| speed-up, first row / last row | {first['median_s'] / last['median_s']:.1f}x | "
                 f"{first['best_s'] / last['best_s']:.1f}x | | | |")
    lines += ["", "| memory copy (read + write counted) | GB/s, median | GB/s, best |", "|---|---|---|"]
    for name, rate in result["copy_gb_per_s"].items():
        mark = " (the limit's rate)" if name == result["best_copy"] else ""
        lines.append(f"| {name}{mark} | {rate['median']:.1f} | {rate['best']:.1f} |")
    limit = result["limit_s"]
    lines.append(f"\nmemory-traffic limit: {gb:.2f} GB at the limit's rate = {limit['median']:.3f} s (median), "
                 f"{limit['best']:.3f} s (best); gradient buffers cleared by both: {result['buffers_cleared']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "deepspeech2.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=str(ROOT / "bench" / "optimizer_update.json"),
                        help="where to write the raw numbers ('' for nowhere)")
    args = parser.parse_args()
    machine = cpu_description()
    before = load_average()
    result = run(args.config, args.repeats)
    result.update(machine, load_before=before, load_after=load_average(), mindspore=ms.__version__,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"CPU: {machine['cpu']}; {machine['cores']} cores; ISA: {machine['isa']}; "
          f"ONEDNN_MAX_CPU_ISA={machine['onednn_max_cpu_isa']}; MindSpore {ms.__version__}")
    print(f"load average before {before}, after {result['load_after']}")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
