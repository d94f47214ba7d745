"""One training run per checkpoint directory.

Two runs writing checkpoints and logs into one `ckpt_path` overwrite each other's files and
interleave their logs. The first run creates `<ckpt_path>/train.lock` (exclusively: `O_CREAT |
O_EXCL`, so of two runs starting together exactly one succeeds) holding its pid, host and
process start time; a second run finds it and stops with a message naming them.

A lock whose process is gone is stale (the run was killed, or the machine restarted): on the
same host a dead pid, or a live pid with another start time (the pid was reused), is detected
and the lock taken over with a warning. A lock from another host cannot be checked from here:
the message says to remove the file if that run is over.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Optional

from mindaudio.config import UserError
from mindaudio.host import process_alive

logger = logging.getLogger(__name__)

LOCK_NAME = "train.lock"

# A lock file with no readable content is one being written right now, or one whose writer was
# killed between creating and filling it; after this many seconds it is the latter.
UNREADABLE_GRACE_SECONDS = 10.0


class RunLockError(UserError):
    """Another training run holds the checkpoint directory."""


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of `pid` (clock ticks since boot), or None where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count after its closing ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {when}"


class RunLock:
    """The lock of one directory; `acquire()` then `release()` (or use it as a context manager)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.held = False
        self._mine = {}

    def _read(self) -> Optional[dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            return None

    def _stale_reason(self, owner: Optional[dict]) -> Optional[str]:
        """Why the existing lock is stale, or None when its run may still be going."""
        if owner is None:
            try:
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                return "it disappeared"
            return f"it is unreadable and {age:.0f} s old" if age > UNREADABLE_GRACE_SECONDS else None
        if owner.get("host") != socket.gethostname():
            return None
        pid = owner["pid"]
        if not process_alive(pid):
            return f"process {pid} is no longer running"
        start = _process_start(pid)
        if owner.get("pid_start") and start and start != owner["pid_start"]:
            return f"process {pid} is another program now (the pid was reused)"
        return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._mine, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> "RunLock":
        """Take the lock or raise RunLockError naming the run that holds it."""
        os.makedirs(self.directory, exist_ok=True)
        self._mine = {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _process_start(os.getpid()),
                      "started": round(time.time(), 3)}
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            try:
                owner = self._read()
            except FileNotFoundError:
                continue  # released between our attempt and the read: try again
            reason = self._stale_reason(owner)
            if reason is None:
                who = _describe(owner) if owner else "a run that is writing it now"
                raise RunLockError(
                    f"{self.directory} is in use by another training run ({who}); lock file {self.path}. "
                    f"Wait for it to finish, use another CheckpointConfig.ckpt_path, or remove the lock file "
                    f"if that run is over")
            logger.warning("taking over the stale lock %s (%s): %s", self.path,
                           _describe(owner) if owner else "no owner recorded", reason)
            try:
                # Only the lock judged stale: another new run may have replaced it meanwhile.
                if self._read() == owner:
                    os.remove(self.path)
            except FileNotFoundError:
                pass
        raise RunLockError(f"could not take the lock {self.path}: other runs keep creating it")

    def release(self) -> None:
        """Remove the lock file if it is still ours (never another run's)."""
        if not self.held:
            return
        self.held = False
        try:
            owner = self._read()
        except FileNotFoundError:
            return
        if owner is not None and owner.get("pid") == self._mine["pid"] and owner.get("host") == self._mine["host"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunLock", "RunLockError"]
