"""Checkpoint files: written atomically with a CRC, read back verified.

A checkpoint holds the model's parameters under the original's names (so the original's
evaluation code and ours read the same files), Adam's state under the names the original's
training cell used (`moment1.*`, `moment2.*`, `beta1_power`, `beta2_power`, `global_step`,
`learning_rate`), and the loop's position (`TrainState`).

MindSpore deletes a file it overwrites before writing the new one, so a kill during a save over
an existing name would leave nothing. We always save under a fresh hidden name that carries this
host and process id, and `os.replace` it into place: at every instant each final name is either
absent or complete, and a starting run can tell its own leftovers from another live run's.

Every file we write carries MindSpore's CRC32 trailer; reading verifies it before MindSpore parses
the file, so a flipped byte anywhere (inside a weight included) is an error naming the file.
Files without the trailer (the original's, or ours from before) are read unchecked.
"""
import binascii
import contextlib
import dataclasses
import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import mindspore as ms

from mindaudio import host
from mindaudio.checkpoint.errors import CheckpointError
from mindaudio.checkpoint.source import describe_source, resolve_checkpoint

# `.partial-<host>-<pid>-<final name>`; MindSpore itself writes `<partial stem>.tmp` first.
_PARTIAL_PREFIX = ".partial-"
_PARTIAL_PATTERN = re.compile(rf"^{re.escape(_PARTIAL_PREFIX)}(?P<host>[^-]*)-(?P<pid>\d+)-.*\.(ckpt|tmp)$")
# MindSpore's trailer: b"crc_num" and the CRC32 of everything before it, as 10 big-endian bytes.
_CRC_TAG = b"crc_num"
_CRC_TRAILER = len(_CRC_TAG) + 10
_READ_CHUNK = 1 << 22


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
STATE_PREFIX = "train_state."


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def partial_name(final_name: str) -> str:
    """The hidden name a save of `final_name` is written under before its rename."""
    return f"{_PARTIAL_PREFIX}{_host_tag()}-{os.getpid()}-{final_name}"


def _state_to_dict(state: TrainState) -> Dict[str, object]:
    out = {}
    for key, value in dataclasses.asdict(state).items():
        if isinstance(value, float) and math.isinf(value):
            value = 1e30  # stored as float32; inf would not round-trip through every reader
        out[STATE_PREFIX + key] = value
    return out


def _state_from_dict(values: Dict[str, object]) -> Optional[TrainState]:
    if not any(k.startswith(STATE_PREFIX) for k in values):
        return None
    kwargs = {}
    for key, tp in _STATE_KEYS.items():
        raw = values.get(STATE_PREFIX + key)
        if raw is None:
            continue
        value = raw.asnumpy().item() if hasattr(raw, "asnumpy") else raw
        kwargs[key] = float(value) if tp in (float, "float") else int(value)
    state = TrainState(**kwargs)
    if state.best_wer >= 1e29:
        state.best_wer = math.inf
    return state


def save_atomic(path: str, params: List[Tuple[str, ms.Tensor]], state: Optional[TrainState] = None) -> str:
    """Write `params` (and `state`) to `path`, with a CRC, so that `path` is never seen half-written."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, partial_name(name))
    ms.save_checkpoint([{"name": n, "data": t} for n, t in params], partial,
                       append_dict=_state_to_dict(state) if state is not None else None, crc_check=True)
    os.replace(partial, path)
    return path


def verify_crc(path: str) -> bool:
    """Check the CRC32 trailer MindSpore appends with `crc_check=True`; False when there is none.

    Done here rather than by `ms.load_checkpoint(crc_check=True)`, which reports a mismatch as
    "may not have permission to read it" and logs an extra error line.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < _CRC_TRAILER:
            return False
        f.seek(size - _CRC_TRAILER)
        trailer = f.read(_CRC_TRAILER)
        if trailer[:len(_CRC_TAG)] != _CRC_TAG:
            return False
        expected = int.from_bytes(trailer[len(_CRC_TAG):], byteorder="big")
        f.seek(0)
        remaining, crc = size - _CRC_TRAILER, 0
        while remaining:
            chunk = f.read(min(_READ_CHUNK, remaining))
            if not chunk:
                break
            crc = binascii.crc32(chunk, crc)
            remaining -= len(chunk)
    if crc != expected:
        raise CheckpointError(f"{path}: checkpoint is corrupt (CRC32 {crc:08x}, written as {expected:08x}): "
                              f"it changed after it was saved")
    return True


@contextlib.contextmanager
def mindspore_log_quiet():
    """Silence MindSpore's logger for a call whose outcome we report ourselves in one line (its
    checkpoint reader logs an error before raising; its loader warns about every name not loaded)."""
    try:
        from mindspore import log as ms_log
        ms_logger = ms_log._get_logger()  # noqa: SLF001 (no public handle on MindSpore's logger)
    except Exception:  # a MindSpore without it: its extra line is only noise
        yield
        return
    was_disabled = ms_logger.disabled
    ms_logger.disabled = True
    try:
        yield
    finally:
        ms_logger.disabled = was_disabled


def read_checkpoint(path: str) -> Dict[str, ms.Parameter]:
    """Every entry of a local checkpoint file, CRC-verified when it has a CRC."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        verify_crc(path)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    try:
        with mindspore_log_quiet():
            return ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError for corrupt files
        cause = err.__cause__ or err
        raise CheckpointError(f"cannot read checkpoint {path}: {str(cause).strip().splitlines()[0]}") from None


def load_checkpoint(path_or_url: str) -> Tuple[Dict[str, ms.Parameter], Optional[TrainState]]:
    """Read a checkpoint (a file, or an http(s) URL fetched once into the cache):
    (parameters by name, TrainState or None for files without our training state)."""
    path = resolve_checkpoint(path_or_url)
    try:
        values = read_checkpoint(path)
    except CheckpointError as err:
        if path != path_or_url:
            raise CheckpointError(f"{err} ({describe_source(path_or_url, path)})") from None
        raise
    state = _state_from_dict(values)
    params = {k: v for k, v in values.items() if not k.startswith(STATE_PREFIX)}
    return params, state


def partial_owner(name: str) -> Optional[Tuple[str, int]]:
    """(host, pid) of the process that wrote a partial file, or None for any other name."""
    match = _PARTIAL_PATTERN.match(name)
    return (match.group("host"), int(match.group("pid"))) if match else None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a reused id reads as alive: kept, never lost)."""
    return pid == os.getpid() or host.process_alive(pid)


def is_own_or_stale_partial(name: str) -> bool:
    """A partial file this process wrote, or one whose writer on this host is dead."""
    owner = partial_owner(name)
    if owner is None:
        return False
    host, pid = owner
    if host != _host_tag():
        return False  # another host's process: its liveness cannot be seen from here
    return pid == os.getpid() or not process_alive(pid)
