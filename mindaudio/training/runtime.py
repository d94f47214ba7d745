"""MindSpore context: device, execution mode, and data-parallel set-up."""
import os
from dataclasses import dataclass

import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms

from mindaudio.config import RuntimeConfig


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_msrun() -> bool:
    """msrun (and MindSpore's environment-variable launch) set MS_ROLE for every process."""
    return os.environ.get("MS_ROLE") == "MS_WORKER"


def setup_runtime(config: RuntimeConfig, seed: int) -> Runtime:
    """Set the MindSpore context from `config`; initialise collectives when data parallel.

    Every rank is seeded identically so that all start from the same initial weights.
    """
    ms.set_context(mode=ms.GRAPH_MODE if config.mode == "GRAPH" else ms.PYNATIVE_MODE,
                   device_target=config.device_target)
    if config.device_target != "CPU":
        ms.set_context(device_id=config.device_id)
    ms.set_seed(seed)
    if not (config.is_distributed or launched_by_msrun()):
        return Runtime()
    from mindspore.communication import get_group_size, get_rank, init
    init()
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return Runtime(rank=get_rank(), world_size=world)
