"""Checkpoints that survive a crash at any moment, and resume training exactly.

A checkpoint holds the model's parameters under the original's names (so the original's
evaluation code and ours read the same files), Adam's state under the names the original's
training cell used (`moment1.*`, `moment2.*`, `beta1_power`, `beta2_power`, `global_step`,
`learning_rate`), and the loop's position (`TrainState`).

MindSpore deletes a file it overwrites before writing the new one, so a kill during a save over
an existing name would leave nothing. We always save under a fresh hidden name and `os.replace`
it into place: at every instant each final name is either absent or complete.
"""
import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import mindspore as ms

_PARTIAL_PREFIX = ".partial-"


@dataclass
class TrainState:
    """Where the training loop stands; stored beside the parameters in every checkpoint.

    `batches_done` counts micro-batches of `epoch` already consumed (the epoch's batch plan is a
    pure function of seed and epoch, so this is the sampler position). Random state is fully
    determined by `seed` and `epoch`: nothing else draws random numbers during training.
    """
    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    seed: int = 1
    best_wer: float = math.inf
    skipped_steps: int = 0
    # Running sum (float32) and count of the current epoch's training losses, so that the
    # epoch's mean loss covers the whole epoch after a resume too.
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0


_STATE_KEYS = {f.name: f.type for f in dataclasses.fields(TrainState)}
_STATE_PREFIX = "train_state."


class CheckpointError(RuntimeError):
    pass


def _state_to_dict(state: TrainState) -> Dict[str, object]:
    out = {}
    for key, value in dataclasses.asdict(state).items():
        if isinstance(value, float) and math.isinf(value):
            value = 1e30  # stored as float32; inf would not round-trip through every reader
        out[_STATE_PREFIX + key] = value
    return out


def _state_from_dict(values: Dict[str, object]) -> Optional[TrainState]:
    if not any(k.startswith(_STATE_PREFIX) for k in values):
        return None
    kwargs = {}
    for key, tp in _STATE_KEYS.items():
        raw = values.get(_STATE_PREFIX + key)
        if raw is None:
            continue
        value = raw.asnumpy().item() if hasattr(raw, "asnumpy") else raw
        kwargs[key] = float(value) if tp in (float, "float") else int(value)
    state = TrainState(**kwargs)
    if state.best_wer >= 1e29:
        state.best_wer = math.inf
    return state


def save_atomic(path: str, params: List[Tuple[str, ms.Tensor]], state: Optional[TrainState] = None) -> str:
    """Write `params` (and `state`) to `path` so that `path` is never seen half-written."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f"{_PARTIAL_PREFIX}{os.getpid()}-{name}")
    ms.save_checkpoint([{"name": n, "data": t} for n, t in params], partial,
                       append_dict=_state_to_dict(state) if state is not None else None)
    os.replace(partial, path)
    return path


def load_checkpoint(path: str) -> Tuple[Dict[str, ms.Parameter], Optional[TrainState]]:
    """Read a checkpoint: (parameters by name, TrainState or None for weights-only files)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        values = ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    state = _state_from_dict(values)
    params = {k: v for k, v in values.items() if not k.startswith(_STATE_PREFIX)}
    return params, state


class CheckpointManager:
    """Numbered checkpoints in one directory: keeps the newest `keep_max` plus the best by WER.

    Files: `<prefix>-e<epoch>-s<global step>.ckpt` and `<prefix>-best.ckpt`.
    """

    def __init__(self, directory: str, prefix: str, keep_max: int):
        self.directory = directory
        self.prefix = prefix
        self.keep_max = keep_max
        self._pattern = re.compile(rf"^{re.escape(prefix)}-e(\d+)-s(\d+)\.ckpt$")

    @property
    def best_path(self) -> str:
        return os.path.join(self.directory, f"{self.prefix}-best.ckpt")

    def numbered(self) -> List[str]:
        """Numbered checkpoints, oldest first (by global step)."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = self._pattern.match(name)
            if match:
                found.append((int(match.group(2)), int(match.group(1)), name))
        return [os.path.join(self.directory, n) for _, _, n in sorted(found)]

    def latest(self) -> Optional[str]:
        files = self.numbered()
        return files[-1] if files else None

    def remove_partials(self) -> None:
        """Delete what a killed save left behind (never a complete checkpoint)."""
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name.startswith(_PARTIAL_PREFIX):
                    os.remove(os.path.join(self.directory, name))

    def save(self, params: List[Tuple[str, ms.Tensor]], state: TrainState) -> str:
        path = os.path.join(self.directory, f"{self.prefix}-e{state.epoch:03d}-s{state.global_step:08d}.ckpt")
        save_atomic(path, params, state)
        for old in self.numbered()[:-self.keep_max]:
            os.remove(old)
        return path

    def save_best(self, params: List[Tuple[str, ms.Tensor]], state: TrainState) -> str:
        return save_atomic(self.best_path, params, state)


def training_parameters(network: ms.nn.Cell, optimizer: ms.nn.Optimizer) -> List[Tuple[str, ms.Tensor]]:
    """What a training checkpoint holds: the network's parameters (BatchNorm statistics included)
    and the optimizer's own state, each under its parameter name."""
    seen = set()
    out = []
    for cell in (network, optimizer):
        for param in cell.get_parameters():
            if param.name not in seen:
                seen.add(param.name)
                out.append((param.name, param))
    return out


def restore_parameters(cells: Iterable[ms.nn.Cell], values: Dict[str, ms.Parameter], path: str,
                       strict: bool = True) -> None:
    """Load `values` into `cells`. With `strict`, every parameter of every cell must be present
    (a resumed run must not silently start from random weights)."""
    for cell in cells:
        missing = [p.name for p in cell.get_parameters() if p.name not in values]
        if strict and missing:
            raise CheckpointError(f"{path} lacks {len(missing)} parameter(s) of {type(cell).__name__}: "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        wrong = [(p.name, tuple(p.shape), tuple(values[p.name].shape)) for p in cell.get_parameters()
                 if p.name in values and tuple(p.shape) != tuple(values[p.name].shape)]
        if wrong:
            name, want, got = wrong[0]
            raise CheckpointError(f"{path}: parameter {name} has shape {got}, the model expects {want} "
                                  f"(was it trained with another ModelConfig?)")
        ms.load_param_into_net(cell, {k: v for k, v in values.items()}, strict_load=False)


def load_model_weights(model: ms.nn.Cell, path: str) -> List[str]:
    """Load a checkpoint's model weights: ours, the original's bare model, or the original's
    training-cell file (its optimizer entries are ignored). Every model parameter must be there.

    Returns the names in the file that are not model parameters (optimizer state and the like).
    """
    values, _ = load_checkpoint(path)
    restore_parameters([model], values, path, strict=True)
    model_names = {p.name for p in model.get_parameters()}
    return sorted(k for k in values if k not in model_names)
