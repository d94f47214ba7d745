"""deepspeech2.yaml into typed dataclasses: the original's keys load, every mistake names file and key."""
import pytest
import yaml

from mindaudio.config import DEFAULT_LABELS, ConfigError, config_from_dict, load_config

# The original MindAudio yaml, verbatim in content (its `betas` is a string and `learning_rate` a float).
ORIGINAL_YAML = """
TrainingConfig:
    epochs: 70
    batch_size: 64
    train_manifest: './train/libri_train_manifest.json'
SpectConfig:
    sample_rate: 16000
    window_size: 0.02
    window_stride: 0.01
    window: "hamming"
AugmentationConfig:
    speed_volume_perturb: False
    spec_augment: False
    noise_dir: ''
    noise_prob: 0.4
    noise_min: 0.0
    noise_max: 0.5
ModelConfig:
    rnn_type: "LSTM"
    hidden_size: 1024
    hidden_layers: 5
    lookahead_context: 20
OptimConfig:
    learning_rate: 0.0003
    learning_anneal: 1.1
    weight_decay: 0.00001
    momentum: 0.9
    eps: 0.000000001
    betas: (0.9, 0.999)
    loss_scale: 1024
    epsilon: 0.00001
CheckpointConfig:
    ckpt_file_name_prefix: 'DeepSpeech'
    ckpt_path: './checkpoint'
    keep_checkpoint_max: 10
EvalConfig:
    batch_size: 128
    test_manifest: './eval/libri_test_clean_manifest.json'
    decoder_type: 'greedy'
    save_output: 'librispeech_val_output'
Pretrained_model: ''
labels: ["'", "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M",
         "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z", " ", "_"]
"""


@pytest.fixture
def original_yaml(tmp_path):
    path = tmp_path / "original.yaml"
    path.write_text(ORIGINAL_YAML)
    return path


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_original_yaml_loads_with_its_values(original_yaml):
    config = load_config(str(original_yaml))
    assert config.TrainingConfig.batch_size == 64
    assert config.OptimConfig.betas == (0.9, 0.999)
    assert config.OptimConfig.loss_scale == 1024.0 and isinstance(config.OptimConfig.loss_scale, float)
    assert config.OptimConfig.epsilon == 1e-5
    assert config.labels == DEFAULT_LABELS and config.labels[-1] == "_"
    assert config.SpectConfig.original_compat is True  # the default reproduces the original's features


def test_the_shipped_yaml_loads(repo_root):
    config = load_config(str(repo_root / "deepspeech2.yaml"))
    assert (config.ModelConfig.hidden_size, config.ModelConfig.hidden_layers) == (1024, 5)
    assert config.SpectConfig.original_compat is True


@pytest.mark.parametrize("section, key, value, words", [
    ("TrainingConfig", "epoch", 3, ["TrainingConfig", "unknown key", "epoch"]),
    ("TrainingConfig", "epochs", "many", ["TrainingConfig.epochs", "integer"]),
    ("TrainingConfig", "epochs", 0, ["TrainingConfig.epochs", ">= 1"]),
    ("OptimConfig", "betas", "(0.9,)", ["OptimConfig.betas", "2 values"]),
    ("SpectConfig", "log_magnitude", "ln", ["SpectConfig.log_magnitude", "'log1p' or 'log'"]),
    ("RuntimeConfig", "device_target", "TPU", ["RuntimeConfig.device_target", "auto, CPU, GPU, Ascend"]),
    ("RuntimeConfig", "mode", 2, ["RuntimeConfig.mode", "GRAPH (0), PYNATIVE (1)"]),
    ("RuntimeConfig", "device_id", -1, ["RuntimeConfig.device_id", ">= 0"]),
    ("TrainingConfig", "bucket_boundaries", [4.0, 2.0], ["TrainingConfig.bucket_boundaries", "increasing"]),
    ("CheckpointConfig", "resume", "maybe", ["CheckpointConfig.resume", "true or false"]),
])
def test_a_wrong_key_or_value_names_the_file_and_the_key(tmp_path, section, key, value, words):
    path = write(tmp_path, {section: {key: value}})
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_an_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown section.*Trainingconfig"):
        load_config(str(write(tmp_path, {"Trainingconfig": {}})))


def test_rules_owned_by_the_data_layer_are_not_copied_here(tmp_path):
    # Window names, labels and noise files are checked by their owners (mindaudio.data.rules, called
    # by mindaudio.cli: see tests/test_cli.py); the bottom layer only checks types and ranges.
    config = load_config(str(write(tmp_path, {"SpectConfig": {"window": "kaiser"}, "labels": ["_", "A"]})))
    assert (config.SpectConfig.window, config.labels) == ("kaiser", ["_", "A"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_overrides_apply_with_the_files_type_checks(original_yaml):
    config = load_config(str(original_yaml), {"EvalConfig.test_manifest": "m.json", "TrainingConfig.epochs": "3",
                                              "OptimConfig.betas": "[0.8, 0.9]", "RuntimeConfig.device_id": "3",
                                              "RuntimeConfig.is_distributed": "true"})
    assert config.EvalConfig.test_manifest == "m.json"
    assert config.TrainingConfig.epochs == 3
    assert config.OptimConfig.betas == (0.8, 0.9)
    assert (config.runtime.device_id, config.runtime.is_distributed) == (3, True)
    with pytest.raises(ConfigError, match="TrainingConfig.batch_size.*integer"):
        load_config(str(original_yaml), {"TrainingConfig.batch_size": "big"})
    with pytest.raises(ConfigError, match="ModelConfig.*unknown key.*hidden"):
        load_config(str(original_yaml), {"ModelConfig.hidden": "3"})


def test_an_empty_override_is_the_empty_string(original_yaml):
    for empty in ("", "''"):
        config = load_config(str(original_yaml), {"EvalConfig.save_output": empty, "Pretrained_model": empty})
        assert (config.EvalConfig.save_output, config.Pretrained_model) == ("", "")


def test_log_magnitude_is_validated_against_original_compat(original_yaml):
    with pytest.raises(ConfigError, match="SpectConfig.log_magnitude.*original_compat: False"):
        load_config(str(original_yaml), {"SpectConfig.log_magnitude": "log"})
    config = load_config(str(original_yaml), {"SpectConfig.log_magnitude": "log",
                                              "SpectConfig.original_compat": "false"})
    assert (config.SpectConfig.log_magnitude, config.SpectConfig.original_compat) == ("log", False)


def test_dropout_must_be_a_probability_below_one(original_yaml):
    assert load_config(str(original_yaml)).ModelConfig.dropout == 0.0
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match="ModelConfig.dropout: must be in \\[0, 1\\)"):
            load_config(str(original_yaml), {"ModelConfig.dropout": bad})
    assert load_config(str(original_yaml), {"ModelConfig.dropout": "0.3"}).ModelConfig.dropout == 0.3


def test_the_runtime_section_defaults_to_auto_and_takes_the_originals_mode_numbers(original_yaml, tmp_path):
    # The original's yaml has no RuntimeConfig section: the device is chosen automatically.
    assert load_config(str(original_yaml)).runtime.device_target == "auto"
    for mode, name in ((0, "GRAPH"), (1, "PYNATIVE"), ("GRAPH", "GRAPH"), ("PYNATIVE", "PYNATIVE")):
        config = load_config(str(write(tmp_path, {"RuntimeConfig": {"device_target": "CPU", "mode": mode}})))
        assert (config.runtime.device_target, config.runtime.mode) == ("CPU", name)
    assert load_config(str(original_yaml), {"RuntimeConfig.mode": "1"}).runtime.mode == "PYNATIVE"
    with pytest.raises(ConfigError, match="RuntimeConfig.mode: expected a string, got True"):
        load_config(str(write(tmp_path, {"RuntimeConfig": {"mode": True}})))


def test_a_yaml_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("TrainingConfig:\n  train_manifest: 'caf\u00e9.json'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8"):
        load_config(str(path))


def test_a_path_that_is_not_a_string_is_named(tmp_path):
    with pytest.raises(ConfigError, match="TrainingConfig.train_manifest: expected a string, got 3"):
        load_config(str(write(tmp_path, {"TrainingConfig": {"train_manifest": 3}})))


def test_missing_input_files_are_named_by_key(tmp_path, repo_root):
    from mindaudio.config import check_files

    config = config_from_dict({"TrainingConfig": {"train_manifest": str(tmp_path / "absent.json")}},
                              source="x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: TrainingConfig.train_manifest: file not found: .*absent.json"):
        check_files(config, ["TrainingConfig.train_manifest"])
    config = config_from_dict({"EvalConfig": {"test_manifest": str(tmp_path)}}, source="x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: EvalConfig.test_manifest: is a directory"):
        check_files(config, ["EvalConfig.test_manifest"])
