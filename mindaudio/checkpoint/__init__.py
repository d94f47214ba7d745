"""The checkpoint layer: files written atomically with a CRC and read back verified, fetched from
http(s) URLs into a cache, loaded exactly into a model (or partly, for fine-tuning), and training
runs resumed, ours or the original's. Below training, evaluation and inference; above models."""
from mindaudio.checkpoint.errors import CheckpointDownloadError, CheckpointError
from mindaudio.checkpoint.loading import (ORIGINAL_ONLY, Resumed, WeightsLoad, is_training_entry,
                                          load_model_weights, restore_parameters, restore_training, state_at_step,
                                          training_parameters)
from mindaudio.checkpoint.manager import CheckpointManager
from mindaudio.checkpoint.source import CACHE_ENV, cached_path, is_url, resolve_checkpoint
from mindaudio.checkpoint.store import (TrainState, load_checkpoint, partial_name, read_checkpoint,
                                        save_atomic, verify_crc)

__all__ = [
    "CACHE_ENV", "CheckpointDownloadError", "CheckpointError", "CheckpointManager", "ORIGINAL_ONLY",
    "Resumed", "TrainState", "WeightsLoad", "cached_path", "is_training_entry", "is_url",
    "load_checkpoint", "load_model_weights", "partial_name", "read_checkpoint", "resolve_checkpoint",
    "restore_parameters", "restore_training", "save_atomic", "state_at_step", "training_parameters", "verify_crc",
]
