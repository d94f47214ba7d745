"""The data layer's checks of a configuration, each asked of the module that owns the rule.

`check_data_config` is called once by the command-line layer after the yaml is loaded, so a
mistake ends before any work starts with one ConfigError naming the yaml file and key, instead of
a failure at the first batch. The rules themselves stay with their owners: the window names and
frame geometry with `features`, the label alphabet with `text`, the noise-file listing with
`augment`.
"""
from __future__ import annotations

from mindaudio.config import Config, ConfigError
from mindaudio.data.augment import AugmentError, list_noise_files
from mindaudio.data.features import check_mel_bands, check_window, fft_size, hop_size
from mindaudio.data.text import check_labels


def check_data_config(config: Config) -> None:
    """Raise ConfigError ("<yaml>: <Section.key>: <why>") for the first data setting that cannot work."""
    spect = config.SpectConfig
    _ask(config, "SpectConfig.window", check_window, spect.window)
    # Either key can be the one at fault (a 50 Hz rate or a 1 ms window): name both.
    _ask(config, "SpectConfig.sample_rate / SpectConfig.window_size", fft_size, spect)
    _ask(config, "SpectConfig.sample_rate / SpectConfig.window_stride", hop_size, spect)
    _ask(config, "SpectConfig.mel_bands", check_mel_bands, spect)
    _ask(config, "labels", check_labels, config.labels)
    augmentation = config.AugmentationConfig
    if augmentation.noise_dir and augmentation.noise_prob > 0:
        try:
            list_noise_files(augmentation.noise_dir)
        except AugmentError as err:
            raise ConfigError(f"{config.source}: AugmentationConfig.noise_dir: {err} (noise is on "
                              f"because noise_dir is set and noise_prob is "
                              f"{augmentation.noise_prob})") from None


def _ask(config: Config, key: str, check, value) -> None:
    try:
        check(value)
    except ValueError as err:
        raise ConfigError(f"{config.source}: {key}: {err}") from None
