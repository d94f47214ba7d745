"""The one thread that owns the MindSpore model: feature matrices in, log-probabilities out, batched.

Requests from the event loop are put on a queue and awaited (never run on the loop). The worker
takes the first waiting item, collects whatever else arrives within `batch_wait` seconds (up to
`max_batch`), groups the items by padded length, and runs each group as one padded batch. A masked
model's outputs do not depend on padding or on the other rows of a batch, so batching changes no
result; it only shares the LSTM's per-step cost (measured on 2 cores, a hidden-256 model on 2 s
clips: 0.15 s per clip alone, 0.07 s per clip in batches of 4). Batch sizes are rounded up to a power of
two (rows of silence fill the rest) so that only a few graph shapes are ever compiled:
log2(max_batch) + 1 batch sizes times the padded lengths seen.

A model that is not masked depends on its padding: then every item runs alone and unpadded, as
`mindaudio.inference.AcousticModel` runs it without padding.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import mindspore as ms

from mindaudio.decoding.hypothesis import log_softmax
from mindaudio.models.deepspeech2 import output_length
from mindaudio.runtime.compile_cache import CompileOnFirstUse

logger = logging.getLogger(__name__)

# Items are padded up to a multiple of this many feature frames (2 s): coarser than a file
# transcribed alone (`mindaudio.inference.padded_length`), so that items of similar lengths
# share a batch.
PAD_MULTIPLE_FRAMES = 200


@dataclass
class _Item:
    features: np.ndarray  # (F, T) float32
    future: concurrent.futures.Future


@dataclass
class _Call:
    function: Callable[..., Any]
    args: tuple
    future: concurrent.futures.Future


@dataclass
class WorkerStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    compiled_shapes: set = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest_batch,
                "compiled_shapes": len(self.compiled_shapes)}


_STOP = object()


def _round_up_pow2(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


class ModelWorker:
    """A daemon thread running `model` (a DeepSpeech2 Cell: (B, 1, F, T) features and (B,) lengths
    -> (T', B, C) logits and lengths) on batches of feature matrices.

    masked: the model's outputs do not depend on padding (ModelConfig.masked); only then are items
    padded to a multiple of `pad_multiple` frames and batched. compiler: compiles each batch shape
    through the compile cache at its first use (None: at its first call, kept for this process only).
    """

    def __init__(self, model: ms.nn.Cell, masked: bool = True, max_batch: int = 8, batch_wait: float = 0.005,
                 pad_multiple: int = PAD_MULTIPLE_FRAMES, compiler: Optional[CompileOnFirstUse] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.masked = masked
        self.max_batch = max_batch if masked else 1
        self.batch_wait = batch_wait
        self.pad_multiple = pad_multiple if masked else 1
        self.compiler = compiler
        self.stats = WorkerStats()
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        if hasattr(model, "set_train"):
            model.set_train(False)

    # ------------------------------------------------------------ used from the event loop

    def start(self, warm_up_bins: Optional[int] = None) -> None:
        """Start the thread; with `warm_up_bins` (F), first compile the batch-1 graph of the
        shortest padded length so that the first request does not wait for it."""
        self._thread.start()
        if warm_up_bins is not None and self.masked:
            self.submit(np.zeros((warm_up_bins, self.pad_multiple), dtype=np.float32)).result()

    def stop(self, timeout: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def submit(self, features: np.ndarray) -> concurrent.futures.Future:
        """features (F, T) float32 -> a future of (T', C) float32 log-probabilities."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Item(np.asarray(features, dtype=np.float32), future))
        return future

    async def log_probs(self, features: List[np.ndarray]) -> List[np.ndarray]:
        """Each (F, T_i) feature matrix's (T_i', C) log-probabilities; submitted together, so the
        windows of one long recording can share batches. Cancelling the await cancels the items
        that have not started."""
        futures = [self.submit(f) for f in features]
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        finally:
            for f in futures:
                f.cancel()

    async def call(self, function: Callable[..., Any], *args) -> Any:
        """Run `function(*args)` on the worker thread, between batches: for code that drives the
        model itself (an incremental streaming recogniser keeps model state between calls)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Call(function, args, future))
        return await asyncio.wrap_future(future)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            pending = [first]
            deadline = time.monotonic() + self.batch_wait
            stop = False
            while len(pending) < 4 * self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                pending.append(item)
            self._serve(pending)
            if stop:
                return

    def _serve(self, pending: List[Any]) -> None:
        groups: Dict[int, List[_Item]] = {}
        for job in pending:
            if not job.future.set_running_or_notify_cancel():
                continue  # its client went away
            if isinstance(job, _Call):
                self._settle(job.future, job.function, *job.args)
            else:
                groups.setdefault(self._padded(job.features.shape[1]), []).append(job)
        for padded, items in sorted(groups.items()):
            for start in range(0, len(items), self.max_batch):
                batch = items[start:start + self.max_batch]
                try:
                    results = self._run_batch([i.features for i in batch], padded)
                except Exception as err:  # noqa: BLE001  (a failed batch fails its requests, not the worker)
                    logger.exception("model batch failed")
                    for item in batch:
                        item.future.set_exception(err)
                    continue
                for item, result in zip(batch, results):
                    item.future.set_result(result)

    @staticmethod
    def _settle(future: concurrent.futures.Future, function: Callable[..., Any], *args) -> None:
        try:
            future.set_result(function(*args))
        except Exception as err:  # noqa: BLE001  (delivered to the caller)
            future.set_exception(err)

    def _padded(self, frames: int) -> int:
        return -(-frames // self.pad_multiple) * self.pad_multiple

    def _run_batch(self, features: List[np.ndarray], padded: int) -> List[np.ndarray]:
        rows = _round_up_pow2(len(features)) if self.masked else 1
        freq = features[0].shape[0]
        batch = np.zeros((rows, 1, freq, padded), dtype=np.float32)
        lengths = np.ones((rows,), dtype=np.int32)  # filler rows: one frame of silence
        for row, matrix in enumerate(features):
            batch[row, 0, :, :matrix.shape[1]] = matrix
            lengths[row] = matrix.shape[1]
        inputs = (ms.Tensor(batch), ms.Tensor(lengths))
        if self.compiler is not None:
            self.compiler.before_call(f"serve {rows}x{padded}", self.model, inputs)
        logits, _ = self.model(*inputs)
        logits = logits.asnumpy()
        self.stats.batches += 1
        self.stats.items += len(features)
        self.stats.largest_batch = max(self.stats.largest_batch, len(features))
        self.stats.compiled_shapes.add((rows, padded))
        return [log_softmax(logits[: int(output_length(int(lengths[row]))), row]) for row in range(len(features))]
