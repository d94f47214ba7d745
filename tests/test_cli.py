"""Every entry point, run as a user runs it, on each mistake a user makes: one line, a non-zero exit.

Each case runs the real script in a subprocess with this venv's python and checks that it fails,
that the last line of stderr starts with `error:` and names the file or key at fault, and that no
traceback was printed. The mistakes are caught before MindSpore compiles anything; the cases that
have to build a model (a checkpoint that is not one, a missing audio file) are marked slow.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from mindaudio.cli import (CommandLineError, EXIT_USER_ERROR, parse_command_line,
                           split_overrides)
from mindaudio.config import ConfigError, check_writable_dir, config_from_dict

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["train.py", "eval.py", "transcribe.py", "export.py", "scripts/tune_lm.py"]
# A small model so that the cases which build one stay quick.
SMALL_MODEL = ["--ModelConfig.hidden_size", "8", "--ModelConfig.hidden_layers", "1"]


def files_for(script):
    """transcribe.py needs audio file arguments; the mistake under test is found before they are read."""
    return ["x.wav"] if script == "transcribe.py" else []


def run(script, *args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, *names):
    """Non-zero exit, stderr's last line `error: ...` naming each of `names`, and no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("error: "), proc.stderr[-2000:]
    for name in names:
        assert str(name) in lines[-1], (name, lines[-1])
    return lines[-1]


@pytest.fixture
def speech(tmp_path):
    """A one-second WAV and a manifest of it (the audio is noise: these tests never score it)."""
    audio = tmp_path / "utt.wav"
    soundfile.write(str(audio), np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"audio_filepath": str(audio), "text": "A TEST", "duration": 1.0}) + "\n")
    return audio, manifest


@pytest.fixture
def config_file(tmp_path, speech):
    """A valid yaml whose manifests exist and whose outputs go to tmp_path."""
    _, manifest = speech
    data = {"TrainingConfig": {"train_manifest": str(manifest), "epochs": 1, "batch_size": 1},
            "ModelConfig": {"hidden_size": 8, "hidden_layers": 1},
            "CheckpointConfig": {"ckpt_path": str(tmp_path / "ckpt")},
            "EvalConfig": {"test_manifest": str(manifest), "save_output": str(tmp_path / "report")}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"this is not a MindSpore checkpoint" * 10)
    return path


def blocked_dir(tmp_path):
    """A directory path that cannot be created, even by root: its parent is a regular file."""
    parent = tmp_path / "a_file"
    parent.write_text("x")
    return parent / "sub"


# ---------------------------------------------------------------- mistakes every entry point shares

@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_a_missing_yaml_is_named(script, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(run(script, "-c", missing, *files_for(script)), "config file not found", missing)


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_an_unknown_key_is_named_with_the_known_ones(script, config_file):
    line = assert_one_line_error(run(script, "-c", config_file, "--TrainingConfig.epoch", "3", *files_for(script)),
                                 config_file, "TrainingConfig", "unknown key", "epoch")
    assert "epochs" in line  # the known keys are listed


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_a_wrong_type_or_value_is_named(script, config_file):
    assert_one_line_error(run(script, "-c", config_file, "--TrainingConfig.batch_size", "big", *files_for(script)),
                          "TrainingConfig.batch_size", "integer")
    assert_one_line_error(run(script, "-c", config_file, "--EvalConfig.beam_width", "0", *files_for(script)),
                          "EvalConfig.beam_width", ">= 1")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_an_unknown_flag_is_one_line_not_a_usage_dump(script, config_file):
    assert_one_line_error(run(script, "-c", config_file, "--no_such_flag", *files_for(script)), "--no_such_flag")


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_yaml_that_is_not_utf8_is_named(script, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("TrainingConfig:\n  train_manifest: 'caf\u00e9.json'\n".encode("latin-1"))
    assert_one_line_error(run(script, "-c", path), path, "UTF-8")


def test_a_yaml_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("TrainingConfig:\n  epochs: [1, 2\n")
    assert_one_line_error(run("train.py", "-c", path), path, "not valid yaml")


def test_a_path_that_is_not_a_string_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("TrainingConfig:\n  train_manifest: 3\n")
    assert_one_line_error(run("train.py", "-c", path), "TrainingConfig.train_manifest", "string")


@pytest.mark.parametrize("script", ["train.py", "eval.py", "transcribe.py", "export.py"])
def test_a_device_this_build_cannot_use_is_named_with_the_usable_ones(script, config_file):
    # This MindSpore build is CPU-only (the tests run on CPU); MindSpore itself would end in a C++ stack.
    line = assert_one_line_error(run(script, "-c", config_file, "--device_target", "Ascend", *files_for(script)),
                                 "RuntimeConfig.device_target", "--device_target", "Ascend")
    assert "available: CPU" in line


def test_an_unknown_device_or_mode_is_named(config_file):
    assert_one_line_error(run("train.py", "-c", config_file, "--device_target", "TPU"),
                          "RuntimeConfig.device_target", "auto, CPU, GPU, Ascend")
    assert_one_line_error(run("train.py", "-c", config_file, "--mode", "2"), "RuntimeConfig.mode")


def test_a_sample_rate_too_low_for_a_window_is_named(config_file):
    assert_one_line_error(run("train.py", "-c", config_file, "--SpectConfig.sample_rate", "50"),
                          "SpectConfig.sample_rate", "50")


def test_rules_of_the_data_layer_are_checked_before_any_work(config_file, tmp_path):
    assert_one_line_error(run("train.py", "-c", config_file, "--SpectConfig.window", "hanning"),
                          "SpectConfig.window", "hanning")
    assert_one_line_error(run("eval.py", "-c", config_file, "--labels", "['A', '_', 'B']"), "labels")
    empty = tmp_path / "no_noise"
    empty.mkdir()
    assert_one_line_error(run("train.py", "-c", config_file, "--AugmentationConfig.noise_dir", empty),
                          "AugmentationConfig.noise_dir", empty)


# ---------------------------------------------------------------- train.py

def test_train_names_a_missing_manifest(config_file, tmp_path):
    missing = tmp_path / "absent.json"
    assert_one_line_error(run("train.py", "-c", config_file, "--TrainingConfig.train_manifest", missing),
                          "TrainingConfig.train_manifest", missing)


def test_train_names_a_manifest_path_that_is_a_directory(config_file, tmp_path):
    assert_one_line_error(run("train.py", "-c", config_file, "--TrainingConfig.val_manifest", tmp_path),
                          "TrainingConfig.val_manifest", "directory")


def test_train_checks_ckpt_path_can_be_written_before_any_work(config_file, tmp_path):
    blocked = blocked_dir(tmp_path)
    proc = run("train.py", "-c", config_file, "--CheckpointConfig.ckpt_path", blocked)
    assert_one_line_error(proc, "CheckpointConfig.ckpt_path", blocked)
    assert "device:" not in proc.stdout  # refused before the runtime was even set up


def test_train_names_a_missing_resume_checkpoint(config_file, tmp_path):
    missing = tmp_path / "gone.ckpt"
    assert_one_line_error(run("train.py", "-c", config_file, "--CheckpointConfig.resume_from", missing),
                          "CheckpointConfig.resume_from", missing)


# ---------------------------------------------------------------- eval.py

def test_eval_names_a_missing_test_manifest(config_file, tmp_path):
    missing = tmp_path / "absent.json"
    assert_one_line_error(run("eval.py", "-c", config_file, "--EvalConfig.test_manifest", missing),
                          "EvalConfig.test_manifest", missing)


def test_eval_checks_save_output_can_be_written_before_it_evaluates(config_file, tmp_path):
    blocked = blocked_dir(tmp_path)
    proc = run("eval.py", "-c", config_file, "--EvalConfig.save_output", blocked / "report")
    assert_one_line_error(proc, "EvalConfig.save_output", blocked)
    assert "device:" not in proc.stdout


def test_eval_names_a_missing_checkpoint(config_file, tmp_path):
    missing = tmp_path / "absent.ckpt"
    assert_one_line_error(run("eval.py", "-c", config_file, "--pre_trained_model_path", missing),
                          "Pretrained_model", missing)


def test_eval_with_nothing_to_evaluate_names_the_keys(config_file, tmp_path):
    assert_one_line_error(run("eval.py", "-c", config_file, "--CheckpointConfig.ckpt_path", tmp_path / "empty"),
                          "Pretrained_model", "CheckpointConfig.ckpt_path")


@pytest.mark.slow
def test_eval_names_a_checkpoint_that_is_not_one(config_file, not_a_checkpoint):
    proc = run("eval.py", "-c", config_file, "--Pretrained_model", not_a_checkpoint)
    assert_one_line_error(proc, not_a_checkpoint)
    assert proc.stdout.startswith("device: CPU (auto: no Ascend or GPU available to MindSpore)")


@pytest.mark.slow
def test_the_first_line_of_a_run_is_the_device_and_why(config_file, not_a_checkpoint):
    # --mode 0 is the original's form of GRAPH.
    proc = run("eval.py", "-c", config_file, "--Pretrained_model", not_a_checkpoint, "--device_target", "CPU",
               "--mode", "0")
    assert proc.stdout.splitlines()[0] == "device: CPU (set by RuntimeConfig.device_target)"


# ---------------------------------------------------------------- transcribe.py

def test_transcribe_without_weights_names_the_keys(config_file, speech):
    assert_one_line_error(run("transcribe.py", "-c", config_file, speech[0]), "--checkpoint", "Pretrained_model")


def test_transcribe_names_a_missing_checkpoint(config_file, speech, tmp_path):
    missing = tmp_path / "absent.ckpt"
    assert_one_line_error(run("transcribe.py", "-c", config_file, "--checkpoint", missing, speech[0]),
                          "Pretrained_model", missing)


def test_transcribe_without_files_is_a_usage_error(config_file, not_a_checkpoint):
    assert_one_line_error(run("transcribe.py", "-c", config_file, "--checkpoint", not_a_checkpoint), "files")


def test_transcribe_rejects_a_chunk_too_short_before_building_the_model(config_file, not_a_checkpoint, speech):
    proc = run("transcribe.py", "-c", config_file, "--checkpoint", not_a_checkpoint, "--chunk_seconds", "0",
               speech[0])
    assert_one_line_error(proc, "--chunk_seconds")


@pytest.mark.slow
def test_transcribe_names_a_checkpoint_that_is_not_one(config_file, not_a_checkpoint, speech):
    assert_one_line_error(run("transcribe.py", "-c", config_file, "--checkpoint", not_a_checkpoint, speech[0]),
                          not_a_checkpoint)


@pytest.mark.slow
def test_transcribe_names_a_missing_audio_file_and_exits_1(config_file, speech, tmp_path):
    import mindspore as ms
    from mindaudio.models.build import build_model

    checkpoint = tmp_path / "small.ckpt"
    ms.save_checkpoint(build_model(config_from_dict(yaml.safe_load(config_file.read_text()))), str(checkpoint))
    missing = tmp_path / "absent.wav"
    proc = run("transcribe.py", "-c", config_file, "--checkpoint", checkpoint, speech[0], missing)
    assert proc.returncode == 1  # the other file was transcribed
    assert_one_line_error(proc, missing, "not found")
    assert proc.stdout.startswith(f"{speech[0]}\t")


# ---------------------------------------------------------------- export.py and scripts/tune_lm.py

def test_export_names_a_missing_checkpoint(config_file, tmp_path):
    missing = tmp_path / "absent.ckpt"
    assert_one_line_error(run("export.py", "-c", config_file, "--checkpoint", missing), "Pretrained_model", missing)


def test_export_checks_its_output_directory(config_file, not_a_checkpoint, tmp_path):
    blocked = blocked_dir(tmp_path)
    assert_one_line_error(run("export.py", "-c", config_file, "--checkpoint", not_a_checkpoint,
                              "--output", blocked / "model"), "--output", blocked)


def test_tune_lm_without_an_lm_or_manifest_names_the_key(config_file, tmp_path):
    assert_one_line_error(run("scripts/tune_lm.py", "-c", config_file), "EvalConfig.lm_path", "--lm")
    lm = tmp_path / "lm.arpa"
    lm.write_text("\\data\\\n")
    assert_one_line_error(run("scripts/tune_lm.py", "-c", config_file, "--lm", lm),
                          "TrainingConfig.val_manifest", "--manifest")
    missing = tmp_path / "absent.json"
    assert_one_line_error(run("scripts/tune_lm.py", "-c", config_file, "--lm", lm, "--manifest", missing),
                          "TrainingConfig.val_manifest", missing)


@pytest.mark.slow
def test_tune_lm_names_a_checkpoint_that_is_not_one(config_file, not_a_checkpoint, speech, tmp_path):
    from mindaudio.decoding.ngram import build_arpa

    text, lm = tmp_path / "lm.txt", tmp_path / "lm.arpa"
    text.write_text("A TEST\nA B TEST\n")
    build_arpa(str(text), str(lm), order=2, alphabet=list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    proc = run("scripts/tune_lm.py", "-c", config_file, "--lm", lm, "--manifest", speech[1],
               "--checkpoint", not_a_checkpoint, "--output", tmp_path / "tune.json")
    assert_one_line_error(proc, not_a_checkpoint)


# ---------------------------------------------------------------- scripts/build_ngram_lm.py

def test_build_ngram_lm_names_a_missing_text_and_a_bad_config(tmp_path):
    missing = tmp_path / "none.txt"
    assert_one_line_error(run("scripts/build_ngram_lm.py", missing, tmp_path / "lm.arpa"), missing)
    assert_one_line_error(run("scripts/build_ngram_lm.py", missing, tmp_path / "lm.arpa", "-c", tmp_path / "no.yaml"),
                          "no.yaml")
    text = tmp_path / "t.txt"
    text.write_text("A B\n")
    assert_one_line_error(run("scripts/build_ngram_lm.py", text, tmp_path / "lm.arpa", "--order", "two"),
                          "--order")


# ---------------------------------------------------------------- the parser itself (in process)

def test_overrides_are_split_from_the_entry_points_arguments():
    overrides, rest = split_overrides(["--EvalConfig.alpha", "0.7", "a.wav", "--EvalConfig.lm_path=",
                                       "--labels", "['A', '_']", "--json", "b.wav", "--Pretrained_model", "w.ckpt"])
    assert overrides == {"EvalConfig.alpha": "0.7", "EvalConfig.lm_path": "", "labels": "['A', '_']",
                         "Pretrained_model": "w.ckpt"}
    assert rest == ["a.wav", "--json", "b.wav"]
    with pytest.raises(CommandLineError, match="--EvalConfig.alpha needs a value"):
        split_overrides(["--EvalConfig.alpha"])


def test_one_parse_gives_the_config_and_the_entry_points_own_flags(config_file):
    def own(parser):
        parser.add_argument("--checkpoint")
        parser.add_argument("files", nargs="+")

    config, args = parse_command_line(
        ["-c", str(config_file), "--checkpoint", "w.ckpt", "--EvalConfig.alpha", "0.7", "a.wav",
         "--device_id", "3", "--mode", "1", "--TrainingConfig.epochs=4", "b.wav", "--is_distributed",
         "--OptimConfig.betas", "[0.8, 0.9]", "--CheckpointConfig.resume_from", ""],
        "test", own, runs_model=False)
    assert args.checkpoint == "w.ckpt" and args.files == ["a.wav", "b.wav"]
    assert config.EvalConfig.alpha == 0.7 and config.TrainingConfig.epochs == 4
    assert config.OptimConfig.betas == (0.8, 0.9)
    assert (config.runtime.device_id, config.runtime.mode, config.runtime.is_distributed) == (3, "PYNATIVE", True)
    assert config.runtime.device_target == "auto"
    assert config.CheckpointConfig.resume_from == ""


def test_an_empty_override_means_the_empty_string_for_any_string_key(config_file):
    for empty in ("", "''"):
        config, _ = parse_command_line(["-c", str(config_file), "--EvalConfig.save_output", empty,
                                        "--Pretrained_model", empty], "test", runs_model=False)
        assert config.EvalConfig.save_output == "" and config.Pretrained_model == ""


def test_the_original_mode_numbers_and_the_pre_trained_flag(config_file, tmp_path):
    weights = tmp_path / "w.ckpt"
    for flag, mode in (("0", "GRAPH"), ("1", "PYNATIVE"), ("GRAPH", "GRAPH"), ("PYNATIVE", "PYNATIVE")):
        config, _ = parse_command_line(["-c", str(config_file), "--mode", flag, "--pre_trained_model_path",
                                        str(weights)], "test", runs_model=False)
        assert config.runtime.mode == mode and config.Pretrained_model == str(weights)


def test_single_process_commands_have_no_is_distributed_flag(config_file):
    with pytest.raises(CommandLineError, match="--is_distributed"):
        parse_command_line(["-c", str(config_file), "--is_distributed"], "test", single_process=True,
                           runs_model=False)


def test_derived_overrides_set_config_keys_from_own_flags(config_file):
    def own(parser):
        parser.add_argument("--lm")

    config, _ = parse_command_line(["-c", str(config_file), "--lm", "x.arpa"], "test", own, runs_model=False,
                                   derived_overrides=lambda a: {"EvalConfig.lm_path": a.lm})
    assert config.EvalConfig.lm_path == "x.arpa"


def test_check_writable_dir_creates_and_probes(tmp_path):
    config = config_from_dict({}, source="c.yaml")
    target = tmp_path / "new" / "dir"
    check_writable_dir(str(target), f"{config.source}: CheckpointConfig.ckpt_path")
    assert target.is_dir() and os.listdir(target) == []  # the probe file is removed
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with pytest.raises(ConfigError, match="c.yaml: CheckpointConfig.ckpt_path: .*not a directory"):
        check_writable_dir(str(plain), f"{config.source}: CheckpointConfig.ckpt_path")
    with pytest.raises(ConfigError, match="--output: cannot create the directory"):
        check_writable_dir(str(plain / "sub"), "--output")


def test_user_errors_exit_2_and_bugs_keep_their_traceback(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from mindaudio.cli import run_cli\n"
        "from mindaudio.config import ConfigError\n"
        "def main():\n"
        "    if sys.argv[1] == 'user':\n"
        "        raise ConfigError('c.yaml: Some.key: bad\\nsecond line')\n"
        "    if sys.argv[1] == 'interrupt':\n"
        "        raise KeyboardInterrupt\n"
        "    if sys.argv[1] == 'bug':\n"
        "        raise ZeroDivisionError('a bug')\n"
        "    return int(sys.argv[1])\n"
        "run_cli(main)\n")
    user = subprocess.run([sys.executable, str(script), "user"], capture_output=True, text=True)
    assert user.returncode == EXIT_USER_ERROR
    assert user.stderr.strip().splitlines() == ["error: c.yaml: Some.key: bad | second line"]
    interrupted = subprocess.run([sys.executable, str(script), "interrupt"], capture_output=True, text=True)
    assert interrupted.returncode == 130 and interrupted.stderr.strip() == "error: interrupted"
    bug = subprocess.run([sys.executable, str(script), "bug"], capture_output=True, text=True)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "ZeroDivisionError: a bug" in bug.stderr
    assert subprocess.run([sys.executable, str(script), "0"]).returncode == 0
    assert subprocess.run([sys.executable, str(script), "1"]).returncode == 1


def test_importing_the_library_leaves_mindspores_log_level_alone():
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    code = ("import os, mindaudio; print(os.environ.get('GLOG_v')); import mindaudio.cli; "
            "print(os.environ.get('GLOG_v'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.stdout.split() == ["None", "3"], proc.stderr
