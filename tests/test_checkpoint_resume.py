"""The trainer's choice of where to start: an original training-cell checkpoint (also by URL),
the newest intact checkpoint when the newest is corrupt, and a partial Pretrained_model."""
import logging
import os

import numpy as np

import mindaudio  # noqa: F401  (before mindspore)
import mindspore as ms

from corpus import small_config_dict
from file_server import FileServer
from mindaudio.checkpoint import (CACHE_ENV, CheckpointManager, TrainState, load_checkpoint, save_atomic,
                                  training_parameters)
from mindaudio.config import config_from_dict
from mindaudio.training.trainer import Trainer





def built(config):
    """A Trainer that has chosen its start, its checkpoint directory released again (where the
    trainer locks it) so that the test can go on using it."""
    trainer = Trainer(config, progress=False)
    getattr(trainer, "close", lambda: None)()
    return trainer


def make_config(short_manifest, ckpt_dir, **sections):
    return config_from_dict(small_config_dict(short_manifest, ckpt_dir, **sections), "test.yaml")


def write_original_training_cell(path, trainer, global_step):
    """A checkpoint in the original's training-cell naming (no train_state.*, with scale_sense),
    written by MindSpore from random values shaped like `trainer`'s model and Adam."""
    rng = np.random.default_rng(11)
    written = {}
    for name, param in training_parameters(trainer.model, trainer.optimizer):
        if name == "global_step":
            written[name] = np.array([global_step], np.int32)
        else:
            written[name] = np.abs(rng.standard_normal(param.shape)).astype(np.float32) + 0.1
    written["scale_sense"] = np.array(1024, np.int64)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in written.items()], str(path))
    return written


def test_trainer_resumes_an_original_training_cell_checkpoint(short_manifest, tmp_path, caplog):
    fresh = built(make_config(short_manifest, tmp_path / "fresh"))
    per_epoch = len(fresh.sampler)
    step = per_epoch + 1  # one step into the second epoch
    original = tmp_path / "DeepSpeech-2_1.ckpt"
    written = write_original_training_cell(original, fresh, step)

    config = make_config(short_manifest, tmp_path / "resumed", CheckpointConfig={"resume_from": str(original)},
                         TrainingConfig={"epochs": 3})
    with caplog.at_level(logging.WARNING):
        trainer = built(config)
    assert (trainer.state.epoch, trainer.state.batches_done, trainer.state.global_step) == (1, 1, step)
    warnings = [r.getMessage() for r in caplog.records if "original's training cell" in r.getMessage()]
    assert len(warnings) == 1 and "scale_sense" in warnings[0] and str(original) in warnings[0]
    got = {name: p.asnumpy() for name, p in training_parameters(trainer.model, trainer.optimizer)}
    scale = config.OptimConfig.loss_scale
    for name, value in written.items():
        if name == "scale_sense":
            continue
        factor = scale if name.startswith("moment1.") else scale ** 2 if name.startswith("moment2.") else 1.0
        np.testing.assert_allclose(got[name], value * factor, rtol=1e-6, err_msg=name)


def test_trainer_resumes_from_a_checkpoint_url(short_manifest, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    first = built(make_config(short_manifest, tmp_path / "first"))
    path = CheckpointManager(str(tmp_path / "first"), "DeepSpeech", 3).save(
        training_parameters(first.model, first.optimizer), TrainState(epoch=1, global_step=2, seed=first.state.seed))
    body = open(path, "rb").read()

    server = FileServer({"/runs/DeepSpeech-e001-s00000002.ckpt": body})
    try:
        url = server.url("/runs/DeepSpeech-e001-s00000002.ckpt")
        config = make_config(short_manifest, tmp_path / "second", CheckpointConfig={"resume_from": url})
        second = built(config)
    finally:
        server.stop()
    assert (second.state.epoch, second.state.global_step) == (1, 2)
    want, _ = load_checkpoint(path)
    for p in second.model.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), want[p.name].asnumpy(), err_msg=p.name)


def test_trainer_falls_back_when_the_newest_checkpoint_is_corrupt(short_manifest, tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    source = built(make_config(short_manifest, tmp_path / "source"))
    manager = CheckpointManager(str(ckpt), "DeepSpeech", 3)
    params = training_parameters(source.model, source.optimizer)
    older = manager.save(params, TrainState(epoch=0, batches_done=1, global_step=1, seed=source.state.seed))
    newest = manager.save(params, TrainState(epoch=0, batches_done=2, global_step=2, seed=source.state.seed))
    data = bytearray(open(newest, "rb").read())
    data[len(data) // 2] ^= 0xFF
    os.chmod(newest, 0o600)
    open(newest, "wb").write(bytes(data))
    assert manager.latest() == newest

    with caplog.at_level(logging.WARNING):
        resumed = built(make_config(short_manifest, ckpt))
    assert resumed.state.global_step == 1 and resumed.state.batches_done == 1
    assert any(newest in r.getMessage() for r in caplog.records)
    assert any(older in r.getMessage() for r in caplog.records)


def test_pretrained_model_loads_partly_for_fine_tuning_with_a_warning(short_manifest, tmp_path, caplog):
    other = make_config(short_manifest, tmp_path / "other", ModelConfig={"hidden_size": 32, "hidden_layers": 2})
    source = built(other)
    pretrained = save_atomic(str(tmp_path / "two_layers.ckpt"),
                             [(p.name, p) for p in source.model.get_parameters()])
    config = make_config(short_manifest, tmp_path / "tune")
    config.Pretrained_model = pretrained
    with caplog.at_level(logging.WARNING):
        tuned = built(config)
    lines = [r.getMessage() for r in caplog.records if "fine-tuning" in r.getMessage()]
    assert len(lines) == 1 and "RNN.lstms.1.* (8)" in lines[0] and pretrained in lines[0]
    want = {p.name: p.asnumpy() for p in source.model.get_parameters()}
    for p in tuned.model.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), want[p.name], err_msg=p.name)
