"""Build DeepSpeech2 from the config and load weights into it."""
from typing import List

import numpy as np

from mindaudio.config import Config
from mindaudio.models.deepspeech2 import DeepSpeechModel
from mindaudio.training.checkpoint import CheckpointError, load_checkpoint, restore_parameters


def build_model(config: Config, batch_size: int, seed: int = None) -> DeepSpeechModel:
    """DeepSpeech2 as `ModelConfig` and `SpectConfig` describe it; initial weights drawn from
    `seed` (every data-parallel rank must pass the same one)."""
    model_cfg = config.ModelConfig
    return DeepSpeechModel(batch_size=batch_size, labels=config.labels,
                           rnn_hidden_size=model_cfg.hidden_size, nb_layers=model_cfg.hidden_layers,
                           audio_conf=config.SpectConfig, rnn_type=model_cfg.rnn_type,
                           masked=model_cfg.masked, rng=np.random.default_rng(seed))


def load_model_weights(model: DeepSpeechModel, path: str) -> List[str]:
    """Load a checkpoint's model weights: ours, the original's bare model, or the original's
    training-cell file (its optimizer entries are ignored). Every model parameter must be there.

    Returns the names in the file that are not model parameters (optimizer state and the like).
    """
    values, _ = load_checkpoint(path)
    restore_parameters([model], values, path, strict=True)
    model_names = {p.name for p in model.get_parameters()}
    return sorted(k for k in values if k not in model_names)


__all__ = ["build_model", "load_model_weights", "CheckpointError"]
