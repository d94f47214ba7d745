"""The numbered checkpoints of one training run's directory."""
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import mindspore as ms

from mindaudio.checkpoint.errors import CheckpointError
from mindaudio.checkpoint.store import TrainState, is_own_or_stale_partial, load_checkpoint, save_atomic

logger = logging.getLogger(__name__)


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

    def latest_loadable(self) -> Optional[Tuple[str, Dict[str, ms.Parameter], Optional[TrainState]]]:
        """The newest numbered checkpoint that reads back intact: (path, parameters, state), or None
        when there is none. A newer one that fails (CRC mismatch, truncated) is skipped with a
        warning naming it; if every one fails, the error of the newest is raised (starting afresh
        would silently throw the run away)."""
        files = self.numbered()
        first_error = None
        for path in reversed(files):
            try:
                values, state = load_checkpoint(path)
            except CheckpointError as err:
                first_error = first_error or err
                logger.warning("skipping unreadable checkpoint: %s; trying the previous one", err)
                continue
            if first_error is not None:
                logger.warning("resuming from %s, the newest checkpoint that reads back intact", path)
            return path, values, state
        if first_error is not None:
            raise CheckpointError(f"no checkpoint in {self.directory} reads back intact; newest: {first_error}")
        return None

    def remove_partials(self) -> None:
        """Delete what this process's or a dead process's interrupted saves left behind (never a
        complete checkpoint, never a partial file another live run is writing)."""
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if is_own_or_stale_partial(name):
                    try:
                        os.remove(os.path.join(self.directory, name))
                    except FileNotFoundError:
                        pass  # its writer renamed or removed it meanwhile

    def save(self, params: List[Tuple[str, ms.Tensor]], state: TrainState) -> str:
        path = os.path.join(self.directory, f"{self.prefix}-e{state.epoch:03d}-s{state.global_step:08d}.ckpt")
        save_atomic(path, params, state)
        for old in self.numbered()[:-self.keep_max]:
            os.remove(old)
        return path

    def save_best(self, params: List[Tuple[str, ms.Tensor]], state: TrainState) -> str:
        return save_atomic(self.best_path, params, state)
