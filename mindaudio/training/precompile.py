"""Compile a training run's graphs up front, through the compile cache, so a run that has compiled
them before (a resumed run, a second run of the recipe, the tests) loads them instead.

Graph mode compiles one graph per input shape. The training step's shapes are those of the epoch
plan (batch size, the bucket's frames and label padding); validation's are those of the length-
sorted evaluation plan. `precompile` compiles them in a fixed order with
`mindaudio.runtime.compile_cache.CompileCache`; a shape met later that is not in the list is
compiled when first met, as without the cache.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np

import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms
from mindspore import Tensor, nn

from mindaudio.config import Config
from mindaudio.data.dataset import Split
from mindaudio.data.features import num_freq_bins
from mindaudio.data.sampler import Batch
from mindaudio.evaluation import forward_graphs
from mindaudio.runtime.compile_cache import CompileCache, CompileReport, Graph, describe, shapes_to_compile
from mindaudio.training.train_step import Update
from mindaudio.training.validation import validation_batches


def _batch_shapes(split: Split, batches: Sequence[Batch]) -> List[tuple]:
    """Distinct (batch size, frames, label padding) of `batches`, sorted."""
    return sorted({(len(batch.indices), batch.frames, split.label_pad[batch.bucket]) for batch in batches})


def training_graphs(update: Update, split: Split, batches: Sequence[Batch], config: Config) -> List[Graph]:
    """The train step's graph for every input shape of `batches` (features (B, 1, F, T) float32,
    lengths (B,) int32, labels (B, S) int32, label lengths (B,) int32), then the optimizer update;
    one graph in all for a train step compiled for dynamic shapes."""
    freq = num_freq_bins(config.SpectConfig)
    graphs = []
    for size, frames, label_pad in shapes_to_compile(update.accumulate, _batch_shapes(split, batches)):
        inputs = (Tensor(np.zeros((size, 1, freq, frames), np.float32)), Tensor(np.ones(size, np.int32)),
                  Tensor(np.zeros((size, label_pad), np.int32)), Tensor(np.ones(size, np.int32)))
        graphs.append(Graph(f"train {size}x{frames}", update.accumulate, inputs))
    graphs.append(Graph("optimizer update", update.apply, (Tensor(1.0, ms.float32),)))
    return graphs


def validation_graphs(model: nn.Cell, split: Split, config: Config) -> List[Graph]:
    """The model's forward pass (eval mode) for every input shape of validation's plan."""
    return forward_graphs(model, validation_batches(split, config), config.SpectConfig)


def precompile(cache_dir: str, config: Config, world_size: int, update: Update, model: nn.Cell,
               train_split: Split, batches: Sequence[Batch], val_split: Optional[Split],
               log: Callable[[str], None] = print) -> List[CompileReport]:
    """Compile the train step for `batches`' shapes and, with `val_split`, validation's forward
    passes, loading them from `cache_dir` when they were compiled before; leaves the model in
    training mode. Logs one line per group."""
    description = describe(config.ModelConfig, config.OptimConfig, config.SpectConfig, config.labels,
                           {"world_size": world_size})
    cache = CompileCache(cache_dir, description)
    reports = []
    groups = [("training", lambda: training_graphs(update, train_split, batches, config), True)]
    if val_split is not None:
        groups.append(("validation", lambda: validation_graphs(model, val_split, config), False))
    for name, graphs, training in groups:
        model.set_train(training)
        report = cache.compile_all(graphs())
        reports.append(report)
        log(f"{name}: {report.describe()}")
    model.set_train(True)
    return reports


__all__ = ["precompile", "training_graphs", "validation_graphs"]
