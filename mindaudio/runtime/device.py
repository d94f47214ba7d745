"""MindSpore context: device, execution mode, and data-parallel set-up.

`RuntimeConfig.device_target` 'auto' (the default) picks Ascend when MindSpore can use one, else a
GPU, else the CPU, as the original's README default (Ascend) would on an NPU server while a CPU
machine needs no flag. `setup_runtime` prints the choice and its reason as its first line.

Data parallelism starts from the launcher, with no flag: `mpirun -n N python train.py ...` or
`msrun --worker_num=N ... train.py ...` (see `launcher.detect_launch`); `--is_distributed True`
forces it for launches MindSpore sets up itself (e.g. an Ascend rank table). A plain
`python train.py` is always one process.

`Runtime.compile_cache_dir` is where compiled graphs are kept across runs
(`RuntimeConfig.compile_cache`, `compile_cache_dir`; see `mindaudio.runtime.compile_cache`): set
for one process on the CPU in graph mode, '' otherwise.
"""
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms

from mindaudio.config import RuntimeConfig, UserError
from mindaudio.runtime import launcher
from mindaudio.runtime.compile_cache import default_cache_dir
from mindaudio.runtime.launcher import Launch, LaunchError, detect_launch


class DeviceError(UserError):
    """The configured device cannot be used by this MindSpore build on this machine."""


# The accelerators `auto` looks for, most preferred first; the CPU is always there.
ACCELERATORS = ("Ascend", "GPU")
_DEVICE_KEY = "RuntimeConfig.device_target (--device_target)"


def _accelerator_usable(target: str) -> bool:
    """True when this MindSpore build has `target`'s plugin loaded and sees at least one device."""
    module = {"Ascend": ms.device_context.ascend, "GPU": ms.device_context.gpu}[target]
    # is_available only says whether the plugin loaded (it logs MindSpore's warning when not);
    # device_count asks the driver and raises when there is none.
    if not module.is_available():
        return False
    try:
        return module.device_count() > 0
    except RuntimeError:
        return False


def usable_devices() -> List[str]:
    """The device targets MindSpore can run on here, in `auto`'s order of preference; CPU last."""
    return [target for target in ACCELERATORS if _accelerator_usable(target)] + ["CPU"]


def choose_device(requested: str) -> Tuple[str, str]:
    """(device target, why) for `RuntimeConfig.device_target` = `requested`.

    Raises DeviceError naming the setting and the usable devices when an explicit device cannot be
    used (MindSpore itself would fail later with a C++ stack).
    """
    if requested == "CPU":
        return "CPU", "set by RuntimeConfig.device_target"
    usable = usable_devices()
    if requested == "auto":
        if usable[0] != "CPU":
            return usable[0], f"auto: MindSpore can use {usable[0]}"
        return "CPU", f"auto: no {' or '.join(ACCELERATORS)} available to MindSpore"
    if requested not in usable:
        raise DeviceError(f"{_DEVICE_KEY}: {requested} is not available to this MindSpore build "
                          f"(mindspore {ms.__version__}) on this machine; available: {', '.join(usable)} "
                          f"(or 'auto')")
    return requested, "set by RuntimeConfig.device_target"


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world_size: int = 1
    launcher: str = launcher.SINGLE
    # Where compiled graphs are kept across runs; '' = not kept (see compile_cache_root).
    compile_cache_dir: str = ""

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


def compile_cache_root(config: RuntimeConfig, device: str) -> str:
    """The compile cache's directory for `config` on `device`, or '' when graphs are not kept:
    switched off, not graph mode, or not the CPU (the only device it was measured on)."""
    if not config.compile_cache or config.mode != "GRAPH" or device != "CPU":
        return ""
    return os.path.abspath(os.path.expanduser(config.compile_cache_dir)) if config.compile_cache_dir \
        else str(default_cache_dir())


def setup_runtime(config: RuntimeConfig, seed: int, log_dir: Optional[str] = None,
                  log: Callable[[str], None] = print) -> Runtime:
    """Set the MindSpore context from `config`; initialise collectives when data parallel.

    The first thing it does is `log` the device chosen and why (`device: CPU (auto: ...)`), once,
    from the first rank. Every rank is seeded identically so that all start from the same initial
    weights. log_dir: where rank 0 writes the log of the scheduler it starts under mpirun on CPU
    (default: the temporary directory).
    Under msrun this is also called in msrun's scheduler process, which then serves the cluster
    and exits without returning.
    """
    launch = detect_launch(os.environ)
    device, why = choose_device(config.device_target)
    if launch.kind != launcher.SCHEDULER and launch.rank <= 0:
        log(f"device: {device} ({why})")
    try:
        ms.set_context(mode=ms.GRAPH_MODE if config.mode == "GRAPH" else ms.PYNATIVE_MODE,
                       device_target=device)
    except RuntimeError as err:
        first_line = (str(err).strip().splitlines() or ["no message"])[0]
        raise DeviceError(f"{_DEVICE_KEY}: MindSpore cannot use {device}: {first_line}") from None
    if launch.kind == launcher.SCHEDULER:
        launcher.run_scheduler()
    if device != "CPU":
        ms.set_context(device_id=_device_id(config, launch))
    ms.set_seed(seed)
    if not (config.is_distributed or launch.distributed):
        return Runtime(compile_cache_dir=compile_cache_root(config, device))
    if launch.kind == launcher.MPI and device == "CPU":
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
