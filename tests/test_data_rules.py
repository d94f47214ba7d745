"""Config validation of the data settings asks the owners of the rules (features, text, augment)."""
import mindaudio  # noqa: F401  (sets the oneDNN ISA before anything imports mindspore)

import numpy as np
import pytest
import soundfile

from mindaudio.config import ConfigError, UserError, config_from_dict
from mindaudio.data.augment import AugmentError, Augmentation
from mindaudio.data.features import WINDOW_NAMES, log_spectrogram
from mindaudio.data.rules import check_data_config


def config(**sections):
    return config_from_dict(sections, source="data.yaml")


def test_defaults_and_the_shipped_recipes_pass(repo_root):
    from mindaudio.config import load_config
    check_data_config(config())
    for name in ("deepspeech2.yaml", "configs/digits.yaml"):
        check_data_config(load_config(str(repo_root / name)))


@pytest.mark.parametrize("window", WINDOW_NAMES)
def test_every_window_features_compute_is_accepted(window):
    cfg = config(SpectConfig={"window": window, "original_compat": False})
    check_data_config(cfg)
    assert np.isfinite(log_spectrogram(np.ones(1600, np.float32) * 0.1, cfg.SpectConfig)).all()


@pytest.mark.parametrize("window", ["kaiser", "hanning", "Hamming"])
def test_a_window_features_cannot_compute_is_a_config_error_naming_the_key(window):
    cfg = config()
    cfg.SpectConfig.window = window  # past config.py's own (retiring) list, as it accepted "hanning"
    with pytest.raises(ConfigError, match=rf"^data\.yaml: SpectConfig\.window: unknown window '{window}'"):
        check_data_config(cfg)


def test_frame_geometry_too_small_for_the_sample_rate_is_named():
    cfg = config(SpectConfig={"sample_rate": 50})
    with pytest.raises(ConfigError, match=r"data\.yaml: SpectConfig\.sample_rate / SpectConfig\.window_size: .*FFT size of 1 samples"):
        check_data_config(cfg)


def test_mel_bands_the_features_cannot_compute_are_a_config_error_naming_the_key():
    check_data_config(config(SpectConfig={"original_compat": False, "mel_bands": 40}))
    for spect, why in (({"original_compat": False, "mel_bands": 500}, "1-161 bands"),
                       ({"original_compat": True, "mel_bands": 40}, "original_compat: False")):
        with pytest.raises(ConfigError, match=rf"^data\.yaml: SpectConfig\.mel_bands: .*{why}"):
            check_data_config(config(SpectConfig=spect))


@pytest.mark.parametrize("labels, message", [
    (["A", "A", "_"], "duplicates"),
    (["A", "BC", "_"], "one character"),
    (["_", "A"], "must be the last label"),
])
def test_label_rules_come_from_the_tokenizer(labels, message):
    cfg = config()
    cfg.labels = labels  # as an override would set them, past config.py's own (retiring) copy
    with pytest.raises(ConfigError, match=rf"data\.yaml: labels: .*{message}"):
        check_data_config(cfg)


def test_noise_dir_must_hold_audio(tmp_path):
    empty = tmp_path / "noise"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    cfg = config()
    cfg.AugmentationConfig.noise_dir = str(empty)
    with pytest.raises(ConfigError, match=r"data\.yaml: AugmentationConfig\.noise_dir: no \.wav or \.flac"):
        check_data_config(cfg)
    cfg.AugmentationConfig.noise_dir = str(empty / "readme.txt")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_data_config(cfg)
    cfg.AugmentationConfig.noise_prob = 0.0  # noise off: the folder is not used, so not checked
    check_data_config(cfg)

    soundfile.write(str(empty / "hum.wav"), np.zeros(800, np.float32), 8000)
    cfg.AugmentationConfig.noise_prob = 0.5
    cfg.AugmentationConfig.noise_dir = str(empty)
    check_data_config(cfg)
    assert len(Augmentation.from_config(cfg.AugmentationConfig, 16000, 0).noise) == 1


def test_data_errors_are_user_errors():
    from mindaudio.data.archives import ArchiveError
    from mindaudio.data.audio import AudioError
    from mindaudio.data.dataset import DatasetError
    from mindaudio.data.digits import CorpusError
    from mindaudio.data.librispeech import PreparationError
    from mindaudio.data.manifest import ManifestError
    for error in (AudioError, ManifestError, AugmentError, ArchiveError, CorpusError,
                  PreparationError, DatasetError):
        assert issubclass(error, UserError), error
