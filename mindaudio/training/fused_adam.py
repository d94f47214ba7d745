"""Clip + Adam + L2 weight decay + clearing the gradient buffers as two passes over memory.

MindSpore's composition of the optimizer update (unscale, global norm, clip, weight decay, Adam,
clear; `train_step.ApplyGradients` with `nn.Adam`) runs one kernel per step and per tensor, each
reading or writing whole tensors: 22 passes over the parameters (24 with divide_by_loss_scale_twice),
and the norm's full-tensor ReduceSum alone took 0.36 s of 0.6 s on the full model (86.6 M
parameters) on a 2-core AMD EPYC. The update only needs two passes:

1. `square_sum`: read every gradient buffer once for the global norm (it must be known before any
   weight moves);
2. `fused_adam`: read gradient buffer, weight, first and second moment once, write weight and
   moments, write the buffer's zeros.

Both are C++ kernels run by `ops.Custom(func_type="aot")`, compiled once per machine with the
system's C++ compiler into the user's cache folder (`host.user_cache_dir()/kernels`) and
multi-threaded with OpenMP. `load_kernels()` returns None when there is no compiler or the build
fails; the caller then keeps MindSpore's composition (same results up to float rounding).

Numerics are those of `nn.Adam` (MindSpore's Adam kernel) fed `train_step.ApplyGradients`'s
gradients: g = factor * buffer + weight_decay * weight (factor: loss-scale, micro-batch and clip
division in one multiplier), m += (1 - beta1) (g - m), v += (1 - beta2) (g^2 - v),
weight -= lr_t m / (sqrt(v) + eps) with lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t). The sum of
squares accumulates in float64 over fixed blocks, so its value does not depend on the thread count.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import ops

from mindaudio.host import user_cache_dir

logger = logging.getLogger(__name__)

# Both kernels get every tensor of the model in one call: MindSpore's AOT calling convention gives
# the inputs then the outputs as `params`, each with its rank and shape.
KERNEL_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

int64_t element_count(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

// Elements per partial sum: the partial sums, added in order, fix the result for any thread count.
constexpr int64_t kBlock = 1 << 15;
// Below this many elements a tensor is updated by one thread (starting threads costs more).
constexpr int64_t kParallelFrom = 1 << 16;

}  // namespace

// Inputs: scale (1,) float32, buffers b_0..b_{k-1} float32. Output: (1,) float32,
// scale^2 * sum over all buffers of b^2.
extern "C" int square_sum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                          void *stream, void *extra) {
  const int k = nparam - 2;
  const double scale = static_cast<const float *>(params[0])[0];
  double total = 0.0;
  for (int t = 0; t < k; ++t) {
    const float *b = static_cast<const float *>(params[1 + t]);
    const int64_t n = element_count(ndims[1 + t], shapes[1 + t]);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static) if (n >= kParallelFrom)
    for (int64_t j = 0; j < blocks; ++j) {
      const int64_t end = (j + 1) * kBlock < n ? (j + 1) * kBlock : n;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = j * kBlock; i < end; ++i) s += static_cast<double>(b[i]) * b[i];
      partial[j] = s;
    }
    for (int64_t j = 0; j < blocks; ++j) total += partial[j];
  }
  static_cast<float *>(params[nparam - 1])[0] = static_cast<float>(total * scale * scale);
  return 0;
}

// Inputs: hyper (5,) float32 = (factor, lr_t, beta1, beta2, eps); decay (k,) float32, the weight
// decay of each tensor; then buffers b_0..b_{k-1}, weights w_*, first moments m_*, second moments v_*
// (all float32, tensor t of each the same shape). Updates w, m, v in place and zeroes b.
// Output: (1,) float32 zero (the graph's handle on the side effects).
extern "C" int fused_adam(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                          void *stream, void *extra) {
  const int k = (nparam - 3) / 4;
  const float *hyper = static_cast<const float *>(params[0]);
  const float *decay = static_cast<const float *>(params[1]);
  const float factor = hyper[0], lr = hyper[1], beta1 = hyper[2], beta2 = hyper[3], eps = hyper[4];
  const float keep1 = 1.0f - beta1, keep2 = 1.0f - beta2;
  for (int t = 0; t < k; ++t) {
    float *b = static_cast<float *>(params[2 + t]);
    float *w = static_cast<float *>(params[2 + k + t]);
    float *m = static_cast<float *>(params[2 + 2 * k + t]);
    float *v = static_cast<float *>(params[2 + 3 * k + t]);
    const float wd = decay[t];
    const int64_t n = element_count(ndims[2 + t], shapes[2 + t]);
#pragma omp parallel for simd schedule(static) if (n >= kParallelFrom)
    for (int64_t i = 0; i < n; ++i) {
      const float g = factor * b[i] + wd * w[i];
      const float mi = m[i] + keep1 * (g - m[i]);
      const float vi = v[i] + keep2 * (g * g - v[i]);
      w[i] -= lr * mi / (std::sqrt(vi) + eps);
      m[i] = mi;
      v[i] = vi;
      b[i] = 0.0f;
    }
  }
  static_cast<float *>(params[nparam - 1])[0] = 0.0f;
  return 0;
}
"""

# -fno-math-errno: sqrt without errno is branch-free, so the update loop vectorizes (2.6x faster
# here); sqrt's value is IEEE-exact either way. No -ffast-math: it would reorder the arithmetic.
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++14")
# Set to 0 to keep MindSpore's composed update (no compiler needed).
FUSED_ENV = "MINDAUDIO_FUSED_ADAM"


def _cpu_identity() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor()
    wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def kernel_library() -> Optional[Path]:
    """The compiled kernels for this machine (built on first use, then reused from the cache
    folder), or None when they cannot be built. Safe when several processes build at once."""
    compiler = _compiler()
    if compiler is None:
        logger.warning("no C++ compiler (g++ or $CXX): the optimizer update runs unfused (slower)")
        return None
    key = hashlib.sha256("\0".join([KERNEL_SOURCE, compiler, *COMPILE_FLAGS, _cpu_identity()]).encode()).hexdigest()
    folder = user_cache_dir() / "kernels"
    library = folder / f"fused_adam-{key[:16]}.so"
    if library.is_file():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as work:
            source = Path(work) / "fused_adam.cc"
            source.write_text(KERNEL_SOURCE, encoding="utf-8")
            built = Path(work) / "fused_adam.so"
            subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(built), str(source)], check=True,
                           capture_output=True, text=True, timeout=300)
            os.replace(built, library)
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("building the fused optimizer kernels failed, the update runs unfused (slower): %s",
                       detail.strip()[-2000:])
        return None
    return library


class Kernels:
    """The two kernels as MindSpore primitives (see the module docstring for their inputs)."""

    def __init__(self, library: Path):
        self.square_sum = ops.Custom(f"{library}:square_sum", out_shape=lambda *shapes: (1,),
                                     out_dtype=lambda *types: ms.float32, func_type="aot")
        self.fused_adam = ops.Custom(f"{library}:fused_adam", out_shape=lambda *shapes: (1,),
                                     out_dtype=lambda *types: ms.float32, func_type="aot")
        # It writes its inputs: keep it ordered with the graph's other reads and writes of them.
        self.fused_adam.add_prim_attr("side_effect_mem", True)


def load_kernels() -> Optional[Kernels]:
    """The fused kernels, or None (no compiler, build failed, or MINDAUDIO_FUSED_ADAM=0)."""
    if os.environ.get(FUSED_ENV, "1") == "0":
        return None
    library = kernel_library()
    return Kernels(library) if library is not None else None


__all__ = ["FUSED_ENV", "KERNEL_SOURCE", "Kernels", "kernel_library", "load_kernels"]
