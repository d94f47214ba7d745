"""Which launcher started this process, and MindSpore's CPU cluster under mpirun.

`detect_launch` reads the environment only: msrun (and MindSpore's own environment-variable
launch) set MS_ROLE; Open MPI's mpirun sets OMPI_COMM_WORLD_*; MPICH and Intel MPI set PMI_*.
A plain `python train.py` sets none of them and stays a single process.

MindSpore's CPU collectives need a scheduler process and MS_ROLE/MS_NODE_ID in every worker,
which mpirun does not give. `prepare_cpu_cluster` maps the MPI rank and size onto MindSpore's
variables and, on rank 0, starts the scheduler (`python -m mindaudio.runtime.launcher`), so the
documented `mpirun -n N python train.py -c deepspeech2.yaml` works unchanged on CPU.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Mapping, MutableMapping, Optional, Tuple

from mindaudio.config import UserError

SINGLE = "single"
MSRUN = "msrun"  # msrun, or MindSpore's environment-variable launch (MS_ROLE=MS_WORKER)
SCHEDULER = "scheduler"  # MS_ROLE=MS_SCHED: msrun runs the training script as its scheduler too
MPI = "mpi"  # mpirun of Open MPI, MPICH or Intel MPI

# Derived scheduler ports fall in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral
# range (32768+) so that no outgoing connection already holds the port.
PORT_BASE = 10000
PORT_SPAN = 20000

# The scheduler of a run that died is left to MindSpore's own node timeout; this bounds how long
# ranks wait for it to start listening before they give up with a message.
SCHEDULER_START_TIMEOUT = 180.0

# Set once an MPI rank has been turned into a MindSpore worker ("host:port" of its scheduler), so
# that the set-up is done once per process.
PREPARED = "MINDAUDIO_MPI_SCHEDULER"

# Environment of MPI launchers; stripped from the scheduler so it is plainly MindSpore's.
_MPI_PREFIXES = ("OMPI_", "PMIX_", "PMI_", "MPI_LOCAL", "HYDI_", "HYDRA_")


class LaunchError(UserError, RuntimeError):
    """A distributed launch that cannot be set up; the message says which variable to set."""


@dataclass(frozen=True)
class Launch:
    """How this process was started. rank is -1 when MindSpore assigns it (msrun without ids)."""
    kind: str = SINGLE
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1
    job_key: str = ""  # identifies the MPI job, the same on every rank (derives the port)

    @property
    def distributed(self) -> bool:
        return self.kind in (MSRUN, MPI)


def _int(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    value = environ.get(name)
    if value is None or value == "":
        if default is None:
            raise LaunchError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def detect_launch(environ: Mapping[str, str]) -> Launch:
    """The launcher of this process from its environment; `SINGLE` when there is none.

    An MPI job of size 1 is a single process: nothing to share.
    """
    role = environ.get("MS_ROLE", "")
    if role == "MS_WORKER" and PREPARED in environ:
        role = ""  # an MPI rank that `prepare_cpu_cluster` already made a worker
    if role == "MS_SCHED":
        return Launch(SCHEDULER, rank=-1, world_size=_int(environ, "MS_WORKER_NUM", 1))
    if role == "MS_WORKER":
        world = _int(environ, "MS_WORKER_NUM", 1)
        return Launch(MSRUN, rank=_int(environ, "MS_NODE_ID", -1), world_size=world,
                      local_rank=_int(environ, "DEVICE_ID", 0), local_size=world)
    if role:
        raise LaunchError(f"MS_ROLE={role!r} is not a role this program can take "
                          f"(MS_WORKER or MS_SCHED)")
    if "OMPI_COMM_WORLD_SIZE" in environ:
        launch = _mpi_launch(environ, "ompi", size="OMPI_COMM_WORLD_SIZE", rank="OMPI_COMM_WORLD_RANK",
                             local_rank="OMPI_COMM_WORLD_LOCAL_RANK", local_size="OMPI_COMM_WORLD_LOCAL_SIZE",
                             job_ids=("OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE"))
    elif "PMI_SIZE" in environ and "PMI_RANK" in environ:
        launch = _mpi_launch(environ, "pmi", size="PMI_SIZE", rank="PMI_RANK", local_rank="MPI_LOCALRANKID",
                             local_size="MPI_LOCALNRANKS", job_ids=("PMI_KVSNAME", "PMI_PORT"))
    else:
        return Launch()
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise LaunchError(f"MPI rank {launch.rank} outside a job of {launch.world_size} processes")
    return launch if launch.world_size > 1 else Launch()


def _mpi_launch(environ: Mapping[str, str], family: str, size: str, rank: str, local_rank: str,
                local_size: str, job_ids: Tuple[str, ...]) -> Launch:
    """An MPI rank's `Launch` from the variables its MPI family names: world size and rank are
    required, the local ones default to rank 0 of a host running the whole job. The job key is
    `family:` and the first non-empty of `job_ids`, or "" when none is set."""
    world = _int(environ, size)
    key = next((environ[name] for name in job_ids if environ.get(name)), "")
    return Launch(MPI, rank=_int(environ, rank), world_size=world,
                  local_rank=_int(environ, local_rank, 0), local_size=_int(environ, local_size, world),
                  job_key=f"{family}:{key}" if key else "")


def scheduler_port(launch: Launch, environ: Mapping[str, str], parent_pid: int) -> int:
    """MS_SCHED_PORT if set, else a port derived from the MPI job's id.

    Every rank derives the same port; concurrent jobs get different ones. Without a job id the
    launcher's pid stands in, which the ranks of one host share (their common parent).
    """
    if environ.get("MS_SCHED_PORT"):
        port = _int(environ, "MS_SCHED_PORT")
        if not 0 < port < 65536:
            raise LaunchError(f"MS_SCHED_PORT={port} is not a TCP port")
        return port
    key = launch.job_key or f"ppid:{parent_pid}"
    return PORT_BASE + zlib.crc32(key.encode()) % PORT_SPAN


def scheduler_host(launch: Launch, environ: Mapping[str, str]) -> str:
    """MS_SCHED_HOST if set; else this machine, when every rank runs on it."""
    host = environ.get("MS_SCHED_HOST", "")
    if host:
        return host
    if launch.local_size < launch.world_size:
        raise LaunchError(f"the {launch.world_size} ranks run on several hosts "
                          f"({launch.local_size} on this one): export MS_SCHED_HOST=<address of "
                          f"rank 0's host> to every rank (mpirun -x MS_SCHED_HOST=...)")
    return "127.0.0.1"


def cluster_environment(launch: Launch, host: str, port: int) -> dict:
    """MindSpore's dynamic-cluster variables for worker `launch.rank`."""
    return {"MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(launch.rank),
            "MS_WORKER_NUM": str(launch.world_size), "MS_SCHED_HOST": host,
            "MS_SCHED_PORT": str(port)}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_scheduler(host: str, port: int, world_size: int, log_path: str,
                    environ: Mapping[str, str]) -> subprocess.Popen:
    """Start MindSpore's scheduler for `world_size` workers; its output goes to `log_path`.

    It exits by itself once every worker has left the cluster, or when workers stop sending
    heartbeats (MindSpore's node timeout), so a crashed run leaves nothing behind for long.
    """
    if not port_is_free(host, port):
        raise LaunchError(f"scheduler port {host}:{port} is in use (another job?): export "
                          f"MS_SCHED_PORT=<free port> to every rank (mpirun -x MS_SCHED_PORT=...)")
    env = {name: value for name, value in environ.items() if not name.startswith(_MPI_PREFIXES)}
    env.update(MS_ROLE="MS_SCHED", MS_WORKER_NUM=str(world_size), MS_SCHED_HOST=host,
               MS_SCHED_PORT=str(port))
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as log:
        # Its own session: mpirun's signals to rank 0 must not reach it before the workers
        # have left the cluster; it ends on its own (see above).
        return subprocess.Popen([sys.executable, "-m", "mindaudio.runtime.launcher"], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_scheduler(host: str, port: int, process: Optional[subprocess.Popen] = None,
                       log_path: str = "", timeout: float = SCHEDULER_START_TIMEOUT) -> None:
    """Block until the scheduler accepts connections.

    Joining before it listens works too, but MindSpore then retries for tens of seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LaunchError(f"the MindSpore scheduler exited with code {process.returncode} "
                              f"before listening on {host}:{port}; see {log_path}")
        if port_is_listening(host, port):
            return
        time.sleep(0.2)
    raise LaunchError(f"no MindSpore scheduler listened on {host}:{port} within {timeout:.0f} s"
                      + (f"; see {log_path}" if log_path else " (is rank 0 running?)"))


def prepare_cpu_cluster(launch: Launch, environ: MutableMapping[str, str], log_dir: str,
                        wait: bool = True) -> Optional[subprocess.Popen]:
    """Turn an MPI rank into a MindSpore CPU cluster worker: set its MS_* variables in
    `environ` and, on rank 0, start the scheduler; then (if `wait`) wait until it listens.
    Returns the scheduler process when this call started it. Done once per process.
    """
    if PREPARED in environ:
        host, _, port_text = environ[PREPARED].rpartition(":")
        port, process, log_path = int(port_text), None, ""
    else:
        host = scheduler_host(launch, environ)
        port = scheduler_port(launch, environ, os.getppid())
        process, log_path = None, ""
        if launch.rank == 0:
            log_path = os.path.join(log_dir, f"scheduler_{port}.log")
            process = start_scheduler(host, port, launch.world_size, log_path, environ)
        environ.update(cluster_environment(launch, host, port))
        environ[PREPARED] = f"{host}:{port}"
    if wait:
        wait_for_scheduler(host, port, process, log_path)
    return process


def run_scheduler() -> None:
    """Serve the cluster as MindSpore's scheduler (MS_ROLE=MS_SCHED) until the workers leave;
    MindSpore ends the process there, so this does not return."""
    from mindspore.communication import init

    init()
    sys.exit(0)


def _main() -> int:
    """Entry point of the scheduler process that rank 0 starts under mpirun."""
    if os.environ.get("MS_ROLE") != "MS_SCHED":
        print("mindaudio.runtime.launcher runs MindSpore's scheduler; train.py starts it under "
              "mpirun, it is not run by hand", file=sys.stderr)
        return 2
    # mpirun binds rank 0 to one core; its scheduler need not share it.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    import mindaudio  # noqa: F401  (environment before mindspore)
    import mindspore as ms

    ms.set_context(device_target="CPU")
    run_scheduler()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
