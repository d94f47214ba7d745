"""MindSpore context: device, execution mode, and data-parallel set-up.

Data parallelism starts from the launcher, with no flag: `mpirun -n N python train.py ...` or
`msrun --worker_num=N ... train.py ...` (see `launcher.detect_launch`); `--is_distributed True`
forces it for launches MindSpore sets up itself (e.g. an Ascend rank table). A plain
`python train.py` is always one process.
"""
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms

from mindaudio.config import RuntimeConfig
from mindaudio.runtime import launcher
from mindaudio.runtime.launcher import Launch, LaunchError, detect_launch


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world_size: int = 1
    launcher: str = launcher.SINGLE

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device_id(config: RuntimeConfig, launch: Launch) -> int:
    # One device per local process: mpirun's local rank, msrun's DEVICE_ID.
    if launch.kind == launcher.MPI:
        return launch.local_rank
    if launch.kind == launcher.MSRUN and os.environ.get("DEVICE_ID"):
        return launch.local_rank
    return config.device_id


def setup_runtime(config: RuntimeConfig, seed: int, log_dir: Optional[str] = None) -> Runtime:
    """Set the MindSpore context from `config`; initialise collectives when data parallel.

    Every rank is seeded identically so that all start from the same initial weights.
    log_dir: where rank 0 writes the log of the scheduler it starts under mpirun on CPU
    (default: the temporary directory).
    Under msrun this is also called in msrun's scheduler process, which then serves the cluster
    and exits without returning.
    """
    launch = detect_launch(os.environ)
    ms.set_context(mode=ms.GRAPH_MODE if config.mode == "GRAPH" else ms.PYNATIVE_MODE,
                   device_target=config.device_target)
    if launch.kind == launcher.SCHEDULER:
        launcher.run_scheduler()
    if config.device_target != "CPU":
        ms.set_context(device_id=_device_id(config, launch))
    ms.set_seed(seed)
    if not (config.is_distributed or launch.distributed):
        return Runtime()
    if launch.kind == launcher.MPI and config.device_target == "CPU":
        launcher.prepare_cpu_cluster(launch, os.environ, log_dir or tempfile.gettempdir())
    from mindspore.communication import get_group_size, get_rank, init
    try:
        init()
    except RuntimeError as err:
        how = (f"launched by {launch.kind}" if launch.distributed else
               "is_distributed is set but neither mpirun nor msrun started this process")
        first_line = (str(err).strip().splitlines() or ["no message"])[0]
        raise LaunchError(f"{how}: MindSpore could not join the cluster ({first_line})") from err
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return Runtime(rank=get_rank(), world_size=world, launcher=launch.kind)
