"""What the ranks of a data-parallel run exchange besides gradients.

- `broadcast_parameters`: rank 0's values of some parameters on every rank (BatchNorm's running
  statistics before validation: they are per rank during training, as in the original, since
  CPU has no SyncBatchNorm; rank 0's are the ones its checkpoints hold).
- `sum_over_ranks`: exact sums of non-negative integer counts (validation error counts);
  `mean_over_ranks`: float means for the training log (the loss of the global batch).
- `check_same_on_all_ranks`: every rank resumes from the same state and plans the same number of
  batches, or all of them stop with a message saying which value differs.

MindSpore's CPU collectives reduce only float32 sums (no max/min, no integer types), so integers
travel as base-4096 digits: each digit and each sum of digits over up to 4096 ranks is exact in
float32's 24-bit mantissa.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.communication import get_group_size

DIGIT_BASE = 4096
DIGITS = 4  # integers below 4096**4 = 2**48


class CollectiveError(RuntimeError):
    """The ranks of a data-parallel run disagree, or lost contact with each other."""


def to_digits(values: Sequence[int], base: int = DIGIT_BASE, digits: int = DIGITS) -> np.ndarray:
    """Non-negative integers as base-`base` digits, least significant first: float32 (n, digits)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() >= base ** digits):
        raise ValueError(f"values must lie in [0, {base ** digits}), got {values.tolist()}")
    out = np.zeros((values.size, digits), dtype=np.float32)
    rest = values.copy()
    for position in range(digits):
        out[:, position] = rest % base
        rest //= base
    return out


def from_digits(digit_sums: np.ndarray, base: int = DIGIT_BASE) -> np.ndarray:
    """Inverse of `to_digits`, also for digit-wise sums (digits may exceed base - 1): int64 (n,)."""
    digit_sums = np.rint(np.asarray(digit_sums, dtype=np.float64)).astype(np.int64)
    weights = base ** np.arange(digit_sums.shape[1], dtype=np.int64)
    return digit_sums @ weights


class _AllReduceSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce()

    def construct(self, x):
        return self.all_reduce(x)


class _BroadcastFromRoot(nn.Cell):
    """Assign rank 0's value of every parameter in `params` on all ranks."""

    def __init__(self, params: Sequence[ms.Parameter]):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        self.broadcast = ops.Broadcast(root_rank=0)

    def construct(self):
        values = self.broadcast(self.params)
        done = ()
        for param, value in zip(self.params, values):
            done = done + (ops.assign(param, value),)
        return done


def sum_over_ranks(counts: Sequence[int]) -> np.ndarray:
    """Sum of each non-negative integer count over all ranks, exactly: int64 (len(counts),)."""
    digits = to_digits(counts)
    summed = _AllReduceSum()(Tensor(digits)).asnumpy()
    return from_digits(summed)


def mean_over_ranks(values: Sequence[float]) -> np.ndarray:
    """Mean of each value over all ranks, in float32 (for logs): float64 (len(values),)."""
    summed = _AllReduceSum()(Tensor(np.asarray(values, dtype=np.float32))).asnumpy()
    return summed.astype(np.float64) / get_group_size()


def broadcast_parameters(params: Sequence[ms.Parameter]) -> None:
    """Overwrite `params` on every rank with rank 0's values (float parameters)."""
    params = list(params)
    if params:
        _BroadcastFromRoot(params)()


def check_same_on_all_ranks(values: Dict[str, int], rank: int, hint: str = "") -> None:
    """Raise CollectiveError on every rank unless all ranks hold the same `values`.

    values: names to non-negative integers, the same names in the same order on every rank.
    """
    names = list(values)
    mine = np.asarray([values[name] for name in names], dtype=np.int64)
    # Rank 0's values reach everyone as the sum of (rank 0's digits, zeros elsewhere).
    contribution = mine if rank == 0 else np.zeros_like(mine)
    root = sum_over_ranks(contribution)
    differs = root != mine
    # Then everyone learns whether anyone differs, so that all ranks stop together.
    disagreeing = sum_over_ranks(differs.astype(np.int64))
    if disagreeing.any():
        named = ", ".join(f"{name}: rank 0 has {root[i]}" + (f", rank {rank} has {mine[i]}" if differs[i] else "")
                          for i, name in enumerate(names) if disagreeing[i])
        raise CollectiveError(f"the ranks disagree ({named}); {hint}".rstrip("; "))


__all__ = ["CollectiveError", "broadcast_parameters", "check_same_on_all_ranks", "from_digits",
           "mean_over_ranks", "sum_over_ranks", "to_digits"]
