"""Build DeepSpeech2 from the config."""
from typing import Optional

import numpy as np

from mindaudio.config import Config
from mindaudio.models.deepspeech2 import DeepSpeechModel


def build_model(config: Config, seed: Optional[int] = None, feature_statistics=None) -> DeepSpeechModel:
    """DeepSpeech2 as `ModelConfig` and `SpectConfig` describe it (any batch size); initial
    weights drawn from `seed` (every data-parallel rank must pass the same one).
    feature_statistics: (mean, std) per frequency bin for `SpectConfig.normalisation: fixed`
    (a checkpoint's values replace them)."""
    model_cfg = config.ModelConfig
    model = DeepSpeechModel(batch_size=None, labels=config.labels,
                            rnn_hidden_size=model_cfg.hidden_size, nb_layers=model_cfg.hidden_layers,
                            audio_conf=config.SpectConfig, rnn_type=model_cfg.rnn_type,
                            masked=model_cfg.masked, rng=np.random.default_rng(seed),
                            bidirectional=model_cfg.bidirectional,
                            lookahead_context=model_cfg.lookahead_context,
                            fixed_normalisation=config.SpectConfig.normalisation == "fixed",
                            dropout=model_cfg.dropout)
    if feature_statistics is not None:
        model.set_feature_statistics(*feature_statistics)
    return model
