"""Config checks whose rules the data layer owns (window names, labels, noise files).

PLACEHOLDER from helper "cli" so that mindaudio/cli.py can call it on its branch: helper "data"
owns this module and its version replaces this one at the merge.
"""
from __future__ import annotations

from mindaudio.config import Config, ConfigError
from mindaudio.data.augment import AugmentError, list_noise_files
from mindaudio.data.features import WINDOW_NAMES
from mindaudio.data.text import CharTokenizer


def check_data_config(config: Config) -> None:
    """Raise ConfigError naming the yaml and the key when the data layer cannot use `config`."""
    spect = config.SpectConfig
    if spect.window not in WINDOW_NAMES:
        raise ConfigError(f"{config.source}: SpectConfig.window: must be one of {', '.join(WINDOW_NAMES)}, "
                          f"got {spect.window!r}")
    try:
        CharTokenizer(config.labels)
    except ValueError as err:
        raise ConfigError(f"{config.source}: labels: {err}") from None
    augmentation = config.AugmentationConfig
    if augmentation.noise_dir and augmentation.noise_prob > 0:
        try:
            list_noise_files(augmentation.noise_dir)
        except AugmentError as err:
            raise ConfigError(f"{config.source}: AugmentationConfig.noise_dir: {err} (noise is on because "
                              f"noise_dir is set and noise_prob is {augmentation.noise_prob})") from None
