"""Putting a checkpoint's values into a model (evaluation, transcription, export, fine-tuning) or
into a model and its optimizer (resuming a run, ours or the original's).

Loading is exact: every parameter the cells have must be in the file with its shape, and every
entry of the file must belong to them, except the known entries of a training checkpoint that a
bare model has no place for (Adam's moments of its own parameters, the step, the rate, the beta
powers, the original's loss scale). Only fine-tuning loads part of a file, and says what it left.
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

import mindspore as ms

from mindaudio.checkpoint.errors import CheckpointError
from mindaudio.checkpoint.store import STATE_PREFIX, TrainState, load_checkpoint, mindspore_log_quiet

logger = logging.getLogger(__name__)

# Adam's scalars in the original's training cell and ours.
OPTIMIZER_SCALARS = ("global_step", "learning_rate", "beta1_power", "beta2_power")
MOMENT_PREFIXES = ("moment1.", "moment2.")
# Entries of the original's training cell with no counterpart here: its loss-scale cell's scale
# (ours is OptimConfig.loss_scale, applied inside the train step).
ORIGINAL_ONLY = ("scale_sense",)


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


def is_training_entry(name: str, model_names: Set[str]) -> bool:
    """An entry a training checkpoint holds beside the model's own parameters."""
    if name in OPTIMIZER_SCALARS or name in ORIGINAL_ONLY or name.startswith(STATE_PREFIX):
        return True
    return any(name.startswith(p) and name[len(p):] in model_names for p in MOMENT_PREFIXES)


def _listing(names: Sequence[str], limit: int = 10) -> str:
    """Names for one message line: three or more sharing a prefix (one layer, say) become `prefix.* (n)`."""
    groups: Dict[str, List[str]] = {}
    for name in names:
        groups.setdefault(name.split(" ", 1)[0].rsplit(".", 1)[0], []).append(name)
    items = []
    for prefix, members in groups.items():
        items.extend([f"{prefix}.* ({len(members)})"] if len(members) >= 3 else members)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _shape_mismatches(params: Iterable[ms.Parameter], values: Dict[str, ms.Parameter]) -> List[Tuple[str, tuple, tuple]]:
    return [(p.name, tuple(p.shape), tuple(values[p.name].shape)) for p in params
            if p.name in values and tuple(p.shape) != tuple(values[p.name].shape)]


def _check_exact(source: str, params: List[ms.Parameter], values: Dict[str, ms.Parameter],
                 allowed_extra) -> None:
    names = {p.name for p in params}
    missing = [p.name for p in params if p.name not in values]
    extra = [k for k in values if k not in names and not allowed_extra(k)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) the model needs are missing: {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} parameter(s) the model does not have: {_listing(extra)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(problems)}); was it trained with "
                              f"another ModelConfig (hidden_layers, hidden_size, labels)?")
    wrong = _shape_mismatches(params, values)
    if wrong:
        name, want, got = wrong[0]
        raise CheckpointError(f"{source}: parameter {name} has shape {got}, the model expects {want} "
                              f"(was it trained with another ModelConfig?)")


def _load_into(cell: ms.nn.Cell, values: Dict[str, ms.Parameter]) -> None:
    # Names were checked before (an error, or for fine-tuning one warning line of ours).
    with mindspore_log_quiet():
        ms.load_param_into_net(cell, values, strict_load=False)


@dataclass
class WeightsLoad:
    """What `load_model_weights` did: names loaded, training entries skipped, and for a partial
    (fine-tuning) load the model parameters left at their initial values and the unused entries."""
    source: str
    loaded: List[str]
    training_entries: List[str] = field(default_factory=list)
    not_loaded: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)


def load_model_weights(model: ms.nn.Cell, path_or_url: str, partial: bool = False) -> WeightsLoad:
    """Load a checkpoint's model weights: ours, the original's bare model, or a training-cell file
    of either (its optimizer entries are skipped). `path_or_url` may be an http(s) URL.

    By default the file must hold exactly the model's parameters (names and shapes) apart from
    training entries; anything missing or extra is a `CheckpointError` naming it. `partial=True`
    (fine-tuning) loads whatever matches by name and shape and logs one warning naming the rest;
    it is still an error when nothing matches.
    """
    values, _ = load_checkpoint(path_or_url)
    params = list(model.get_parameters())
    model_names = {p.name for p in params}
    training = sorted(k for k in values if k not in model_names and is_training_entry(k, model_names))
    if not partial:
        _check_exact(path_or_url, params, values, lambda k: is_training_entry(k, model_names))
        _load_into(model, {k: v for k, v in values.items() if k in model_names})
        return WeightsLoad(path_or_url, sorted(model_names), training)

    wrong = {name: (want, got) for name, want, got in _shape_mismatches(params, values)}
    usable = {p.name: values[p.name] for p in params if p.name in values and p.name not in wrong}
    if not usable:
        raise CheckpointError(f"{path_or_url} shares no parameter (by name and shape) with the model: "
                              f"not a DeepSpeech2 checkpoint of this layout")
    not_loaded = [f"{p.name} (shape {wrong[p.name][1]} in the file, {wrong[p.name][0]} in the model)"
                  if p.name in wrong else p.name for p in params if p.name not in usable]
    unused = sorted(k for k in values if k not in model_names and k not in training)
    _load_into(model, usable)
    if not_loaded or unused:
        parts = [f"loaded {len(usable)} of {len(params)} model parameters"]
        if not_loaded:
            parts.append(f"kept initial values of {_listing(not_loaded)}")
        if unused:
            parts.append(f"ignored entries of the file: {_listing(unused)}")
        logger.warning("partial load of %s for fine-tuning: %s", path_or_url, "; ".join(parts))
    return WeightsLoad(path_or_url, sorted(usable), training, not_loaded, unused)


def restore_parameters(cells: Iterable[ms.nn.Cell], values: Dict[str, ms.Parameter], source: str,
                       strict: bool = True) -> None:
    """Load a training checkpoint's `values` into `cells` (a model and its optimizer) exactly: every
    parameter of the cells must be there with its shape (with `strict`), and every entry must belong
    to one of them (the loop state and the original's `scale_sense` aside). `restore_training`
    does this and more."""
    cells = list(cells)
    params = {p.name: p for cell in cells for p in cell.get_parameters()}
    needed = [p for p in params.values() if strict or p.name in values]
    _check_exact(source, needed, values, lambda k: k in ORIGINAL_ONLY or k.startswith(STATE_PREFIX) or k in params)
    for cell in cells:
        _load_into(cell, values)


@dataclass
class Resumed:
    """A training checkpoint restored into a model and its optimizer.

    `state` is the file's TrainState; for the original's training-cell files, which have none, it
    holds only `global_step` (see `state_at_step` for the loop position). `not_used` names the
    file's entries with no counterpart here."""
    source: str
    state: TrainState
    original: bool
    not_used: List[str]


def looks_like_original_training_cell(values: Dict[str, object]) -> bool:
    return "global_step" in values and any(k.startswith("moment1.") for k in values)


def _step_of(values: Dict[str, ms.Parameter]) -> int:
    return int(np.asarray(values["global_step"].asnumpy()).reshape(-1)[0])


def _scaled_moments(values: Dict[str, ms.Parameter], scale: float) -> Dict[str, ms.Parameter]:
    """Adam's moments of gradients `scale` times larger: moment1 times scale, moment2 times scale²."""
    out = dict(values)
    for name, value in values.items():
        power = 1 if name.startswith("moment1.") else 2 if name.startswith("moment2.") else 0
        if power:
            data = value.asnumpy().astype(np.float64) * float(scale) ** power
            out[name] = ms.Parameter(ms.Tensor(data.astype(value.asnumpy().dtype)), name=name)
    return out


def restore_training(network: ms.nn.Cell, optimizer: ms.nn.Optimizer, source: str,
                     values: Dict[str, ms.Parameter], state: Optional[TrainState],
                     original_moment_scale: float = 1.0) -> Resumed:
    """Put a training checkpoint's values (`load_checkpoint`'s result for `source`) into `network`
    and `optimizer`. Every parameter of both must be in the file with its shape; an entry of the
    file that neither has is an error, except the original's `scale_sense`, reported in
    `not_used`.

    An original training-cell file (Adam's state, no TrainState) is accepted: weights, moments,
    beta powers and `global_step` continue. The original's Adam divided the gradients by its loss
    scale before its moments saw them; `original_moment_scale` (that loss scale, when our Adam
    sees undivided gradients; 1 when it repeats the division) restores the moments to our scale.
    """
    original = state is None
    if original and not looks_like_original_training_cell(values):
        raise CheckpointError(f"{source} holds model weights only, no optimizer state to resume from: "
                              f"set it as Pretrained_model to fine-tune from it instead")
    names = {name for name, _ in training_parameters(network, optimizer)}
    not_used = sorted(k for k in values if k not in names and k in ORIGINAL_ONLY)
    if original:
        if original_moment_scale != 1.0:
            values = _scaled_moments(values, original_moment_scale)
        state = TrainState(global_step=_step_of(values))
    restore_parameters([network, optimizer], values, source)
    return Resumed(source, state, original, not_used)


def state_at_step(global_step: int, micro_batches_per_epoch: int, accumulation_steps: int,
                  seed: int) -> TrainState:
    """The loop position after `global_step` optimizer steps of `micro_batches_per_epoch`
    micro-batches each epoch, `accumulation_steps` per step: for a run whose checkpoint records
    only the step (the original's), placed on this run's own plan of batches."""
    steps_per_epoch = max(1, math.ceil(micro_batches_per_epoch / max(1, accumulation_steps)))
    epoch, steps_in = divmod(global_step, steps_per_epoch)
    return TrainState(epoch=epoch, batches_done=min(steps_in * accumulation_steps, micro_batches_per_epoch),
                      global_step=global_step, seed=seed)
