"""Checkpoint integrity (CRC), exact and partial loading, fallback to the newest intact
checkpoint, partial-file ownership, and resuming the original's training cell."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import mindaudio  # noqa: F401  (before mindspore)
import mindspore as ms
from mindspore import ParameterTuple, nn

from mindaudio.checkpoint import (ORIGINAL_ONLY, CheckpointError, CheckpointManager, TrainState, load_checkpoint,
                                  load_model_weights, partial_name, restore_training, save_atomic, state_at_step,
                                  training_parameters, verify_crc)
from mindaudio.config import Config, UserError
from mindaudio.models.build import build_model

LABELS = ["'", "A", "B", " ", "_"]


def small_model(layers=1, hidden=16, labels=LABELS, seed=0):
    config = Config()
    config.ModelConfig.hidden_size = hidden
    config.ModelConfig.hidden_layers = layers
    config.labels = list(labels)
    return build_model(config, seed=seed)


def adam(model):
    return nn.Adam(ParameterTuple(model.trainable_params()), learning_rate=1e-3)


def model_params(model):
    return [(p.name, p) for p in model.get_parameters()]


def values_of(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def flip_inside(path, needle: bytes, count=64):
    """Invert `count` bytes in the middle of the first occurrence of `needle` in the file."""
    os.chmod(path, 0o600)  # MindSpore saves read-only
    data = bytearray(open(path, "rb").read())
    at = data.find(needle)
    assert at >= 0 and len(needle) > count
    start = at + (len(needle) - count) // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)


def test_checkpoint_errors_are_user_errors():
    assert issubclass(CheckpointError, UserError)


def test_saved_checkpoint_carries_a_crc_and_round_trips(tmp_path):
    model = small_model()
    path = save_atomic(str(tmp_path / "m.ckpt"), model_params(model), TrainState(epoch=2, global_step=9))
    assert verify_crc(path)
    values, state = load_checkpoint(path)
    assert (state.epoch, state.global_step) == (2, 9)
    for name, want in values_of(model).items():
        np.testing.assert_array_equal(values[name].asnumpy(), want)


def test_flipped_bytes_inside_a_weight_fail_to_load_naming_the_file(tmp_path):
    model = small_model()
    path = save_atomic(str(tmp_path / "m.ckpt"), model_params(model))
    weight = dict(model.parameters_and_names())["RNN.lstms.0.weight_ih_l0"].asnumpy()
    flip_inside(path, weight.tobytes())
    # Without a check MindSpore reads the damaged weight as if nothing happened.
    unchecked = ms.load_checkpoint(path)["RNN.lstms.0.weight_ih_l0"].asnumpy()
    assert not np.array_equal(unchecked, weight)
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(path)
    assert path in str(err.value)
    with pytest.raises(CheckpointError):
        load_model_weights(small_model(), path)


def test_truncated_checkpoint_is_an_error_naming_the_file(tmp_path):
    path = save_atomic(str(tmp_path / "m.ckpt"), model_params(small_model()))
    os.chmod(path, 0o600)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_a_two_layer_checkpoint_does_not_load_into_a_one_layer_model(tmp_path):
    path = save_atomic(str(tmp_path / "two.ckpt"), model_params(small_model(layers=2)))
    with pytest.raises(CheckpointError, match="does not have: RNN.lstms.1.") as err:
        load_model_weights(small_model(layers=1), path)
    assert path in str(err.value)
    one = save_atomic(str(tmp_path / "one.ckpt"), model_params(small_model(layers=1)))
    with pytest.raises(CheckpointError, match="missing: RNN.lstms.1."):
        load_model_weights(small_model(layers=2), one)


def test_training_checkpoint_loads_into_a_bare_model(tmp_path):
    trained = small_model(seed=1)
    path = save_atomic(str(tmp_path / "t.ckpt"), training_parameters(trained, adam(trained)),
                       TrainState(global_step=3))
    fresh = small_model(seed=2)
    result = load_model_weights(fresh, path)
    assert {"global_step", "beta1_power", "moment1.fc.module.weight", "moment2.conv.conv1.weight"} <= set(
        result.training_entries)
    want = values_of(trained)
    for name, got in values_of(fresh).items():
        np.testing.assert_array_equal(got, want[name], err_msg=name)


def test_moments_of_parameters_the_model_lacks_are_not_allowed(tmp_path):
    two = small_model(layers=2)
    params = model_params(small_model(layers=1)) + [
        (p.name, p) for p in adam(two).get_parameters() if p.name.startswith("moment1.RNN.lstms.1.")]
    path = save_atomic(str(tmp_path / "odd.ckpt"), params)
    with pytest.raises(CheckpointError, match="moment1.RNN.lstms.1"):
        load_model_weights(small_model(layers=1), path)


def test_fine_tuning_loads_what_fits_and_names_the_rest(tmp_path, caplog):
    source = small_model(labels=LABELS + ["C"], seed=1)  # one more output class
    path = save_atomic(str(tmp_path / "other_labels.ckpt"), model_params(source))
    with pytest.raises(CheckpointError, match="fc.module.weight has shape"):
        load_model_weights(small_model(), path)
    target = small_model(seed=2)
    fc_before = dict(target.parameters_and_names())["fc.module.weight"].asnumpy().copy()
    with caplog.at_level(logging.WARNING, logger="mindaudio.checkpoint"):
        result = load_model_weights(target, path, partial=True)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "fine-tuning" in lines[0] and "fc.module.weight" in lines[0] and path in lines[0]
    assert [n.split()[0] for n in result.not_loaded] == ["fc.module.weight"]
    got, want = values_of(target), values_of(source)
    np.testing.assert_array_equal(got["fc.module.weight"], fc_before)
    np.testing.assert_array_equal(got["RNN.lstms.0.weight_hh_l0"], want["RNN.lstms.0.weight_hh_l0"])


def test_fine_tuning_from_an_unrelated_file_is_an_error(tmp_path):
    path = tmp_path / "unrelated.ckpt"
    ms.save_checkpoint([{"name": "encoder.w", "data": ms.Tensor(np.ones((3, 3), np.float32))}], str(path))
    with pytest.raises(CheckpointError, match="shares no parameter"):
        load_model_weights(small_model(), str(path), partial=True)


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    model = small_model()
    manager = CheckpointManager(str(tmp_path), "DeepSpeech", 5)
    older = manager.save(model_params(model), TrainState(epoch=0, global_step=1))
    newest = manager.save(model_params(model), TrainState(epoch=0, global_step=2))
    weight = dict(model.parameters_and_names())["RNN.lstms.0.weight_hh_l0"].asnumpy()
    flip_inside(newest, weight.tobytes())
    with caplog.at_level(logging.WARNING, logger="mindaudio.checkpoint"):
        path, _, state = manager.latest_loadable()
    assert path == older and state.global_step == 1
    assert any(newest in r.getMessage() for r in caplog.records)
    flip_inside(older, weight.tobytes())
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        manager.latest_loadable()
    assert CheckpointManager(str(tmp_path / "empty"), "DeepSpeech", 5).latest_loadable() is None


def test_remove_partials_removes_only_this_process_and_dead_processes_files(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        own = partial_name("DeepSpeech-e000-s00000001.ckpt")
        assert f"-{os.getpid()}-" in own
        host_and_pid = own.split("-DeepSpeech")[0]
        names = {
            "own": own,
            "own_ms_tmp": own[:-len(".ckpt")] + ".tmp",  # MindSpore's own temporary name
            "dead": host_and_pid.replace(f"-{os.getpid()}", f"-{dead.pid}") + "-DeepSpeech-e0-s2.ckpt",
            "alive": host_and_pid.replace(f"-{os.getpid()}", f"-{alive.pid}") + "-DeepSpeech-e0-s3.ckpt",
            "other_host": f".partial-elsewhere-{dead.pid}-DeepSpeech-e0-s4.ckpt",
            "complete": "DeepSpeech-e000-s00000005.ckpt",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        CheckpointManager(str(tmp_path), "DeepSpeech", 3).remove_partials()
        left = {key for key, name in names.items() if (tmp_path / name).exists()}
        assert left == {"alive", "other_host", "complete"}
    finally:
        alive.kill()
        alive.wait()


def original_training_cell(layers: int, hidden: int, reference_names):
    """The original's training-cell entries for a small model: the reference list's names (those
    of layers this model has), with this model's shapes, plus `scale_sense`."""
    model = small_model(layers=layers, hidden=hidden)
    ours = {name: tuple(p.shape) for name, p in training_parameters(model, adam(model))}
    kept = [n for n in reference_names
            if not any(f"RNN.lstms.{k}." in n for k in range(layers, 5))]
    assert set(kept) == set(ours) | set(ORIGINAL_ONLY)
    return kept, ours


@pytest.fixture(scope="module")
def reference_train_names(reference_dir):
    lines = (reference_dir / "mindaudio_deepspeech2_train_checkpoint_params.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def test_resume_an_original_training_cell_checkpoint(tmp_path, reference_train_names):
    names, shapes = original_training_cell(1, 16, reference_train_names)
    rng = np.random.default_rng(5)
    written = {}
    for name in names:
        if name == "global_step":
            written[name] = np.array([7], np.int32)
        elif name == "scale_sense":
            written[name] = np.array(1024, np.int64)
        else:
            written[name] = rng.standard_normal(shapes[name]).astype(np.float32)
            if name.startswith("moment2.") or name.endswith(("_power", "moving_variance")):
                written[name] = np.abs(written[name])
    path = str(tmp_path / "DeepSpeech-3_120.ckpt")
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in written.items()], path)

    model = small_model(seed=9)
    optimizer = adam(model)
    values, state = load_checkpoint(path)
    assert state is None
    resumed = restore_training(model, optimizer, path, values, state, original_moment_scale=1024.0)
    assert resumed.original and resumed.not_used == ["scale_sense"] and resumed.state.global_step == 7
    got = {name: p.asnumpy() for name, p in training_parameters(model, optimizer)}
    for name, want in written.items():
        if name == "scale_sense":
            continue
        factor = 1024.0 if name.startswith("moment1.") else 1024.0 ** 2 if name.startswith("moment2.") else 1.0
        np.testing.assert_allclose(got[name], want * factor, rtol=1e-6, err_msg=name)
    assert state_at_step(7, micro_batches_per_epoch=3, accumulation_steps=1, seed=1) == TrainState(
        epoch=2, batches_done=1, global_step=7, seed=1)
    assert state_at_step(7, micro_batches_per_epoch=6, accumulation_steps=2, seed=1) == TrainState(
        epoch=2, batches_done=2, global_step=7, seed=1)


def test_resume_needs_optimizer_state_and_the_exact_model(tmp_path):
    model = small_model()
    weights_only = save_atomic(str(tmp_path / "w.ckpt"), model_params(model))
    values, state = load_checkpoint(weights_only)
    with pytest.raises(CheckpointError, match="weights only"):
        restore_training(model, adam(model), weights_only, values, state)
    two = small_model(layers=2)
    path = save_atomic(str(tmp_path / "two.ckpt"), training_parameters(two, adam(two)), TrainState(global_step=1))
    values, state = load_checkpoint(path)
    one = small_model(layers=1)
    with pytest.raises(CheckpointError, match="does not have: RNN.lstms.1."):
        restore_training(one, adam(one), path, values, state)


@pytest.mark.slow
def test_full_size_training_cell_maps_every_original_entry(reference_dir):
    """Our full-size model and Adam hold every entry of the original's training cell, with its
    shape and dtype, except the ones reported as having no counterpart."""
    lines = (reference_dir / "mindaudio_deepspeech2_train_checkpoint_params.txt").read_text().splitlines()
    reference = {}
    for line in lines:
        name, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)
        reference[name] = (tuple(int(d) for d in shape.strip("()").split(",") if d.strip()), dtype)
    model = build_model(Config(), seed=0)
    ours = {name: (tuple(p.shape), str(p.dtype)) for name, p in training_parameters(model, adam(model))}
    assert set(reference) - set(ours) == set(ORIGINAL_ONLY)
    assert set(ours) <= set(reference)
    for name, (shape, dtype) in ours.items():
        assert reference[name] == (shape, dtype), name


def test_missing_file_and_directory_are_errors_naming_them(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nothing.ckpt"):
        load_model_weights(small_model(), str(tmp_path / "nothing.ckpt"))
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(str(tmp_path))
