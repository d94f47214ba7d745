"""The lock on a checkpoint directory, held and contested by real processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from mindaudio.config import UserError
from mindaudio.training.run_lock import LOCK_NAME, RunLock, RunLockError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from mindaudio.training.run_lock import RunLock
    lock = RunLock({directory!r}).acquire()
    print("held", flush=True)
    sys.stdin.readline()  # hold until told to go
    lock.release()
    print("released", flush=True)
""")


def start_holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=REPO, directory=str(directory))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", line
    return proc


def test_a_second_process_is_refused_naming_the_first_then_gets_the_lock_after_it_ends(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunLockError) as refused:
            RunLock(str(tmp_path)).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert str(tmp_path / LOCK_NAME) in message
        assert isinstance(refused.value, UserError)
        assert "\n" not in message
    finally:
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        holder.wait(timeout=30)
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(str(tmp_path)) as lock:
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and lock.held
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL leaves it behind
    with caplog.at_level("WARNING"):
        lock = RunLock(str(tmp_path)).acquire()
    try:
        assert f"process {holder.pid} is no longer running" in caplog.text
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    # Our own (live) pid, recorded with another process start time: the pid was reused.
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                   "pid_start": "1", "started": time.time() - 1e5}))
    with RunLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid_start"] != "1"


def test_a_lock_from_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "some-other-host", "started": time.time()}))
    with pytest.raises(RunLockError, match="some-other-host"):
        RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "some-other-host"


def test_release_never_removes_another_runs_lock(tmp_path):
    lock = RunLock(str(tmp_path)).acquire()
    # Someone removed ours (by hand) and another run took the directory.
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": time.time()}))
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere"


def test_of_two_processes_racing_for_the_lock_exactly_one_wins(tmp_path):
    racer = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from mindaudio.training.run_lock import RunLock, RunLockError
        time.sleep(max(0.0, {time.time() + 1.5!r} - time.time()))
        try:
            RunLock({str(tmp_path)!r}).acquire()
            print("won", flush=True)
        except RunLockError:
            print("refused", flush=True)
        sys.stdin.readline()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", racer], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outcomes = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=30)
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
