"""What this machine offers every layer: the user's cache folder and whether a process still runs.

At the bottom of the layers (beside `errors`), so checkpoints (the download cache, partial files of
dead writers), the runtime (compile cache) and training (the run lock) ask one place.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MINDAUDIO_CACHE"


def user_cache_dir() -> Path:
    """`$MINDAUDIO_CACHE`, else `$XDG_CACHE_HOME/mindaudio`, else `~/.cache/mindaudio`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mindaudio"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host. One that exists but belongs to another
    user counts as alive, and so does a reused id: what it owns is kept, never lost."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["CACHE_ENV", "process_alive", "user_cache_dir"]
