"""train.py and eval.py end to end on real LibriSpeech audio with a tiny model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import mindaudio  # noqa: F401

from corpus import SHORT_IDS, small_config_dict
from mindaudio.config import config_from_dict
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.data.manifest import write_manifest_with_transcripts
from mindaudio.checkpoint import CheckpointManager, load_checkpoint
from mindaudio.training.trainer import learning_rate_for_epoch





def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def run_script(script: str, config: Path, repo_root: Path, *extra: str, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, script, "-c", str(config), *extra], cwd=repo_root,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def model_weights(path: str) -> dict:
    values, _ = load_checkpoint(path)
    return {k: v.asnumpy() for k, v in values.items()}


@pytest.mark.slow
def test_train_then_eval_writes_checkpoints_log_plot_and_report(short_manifest, tmp_path, repo_root):
    ckpt = tmp_path / "ckpt"
    data = small_config_dict(short_manifest, ckpt, short_manifest, TrainingConfig={"epochs": 2})
    config = write_yaml(tmp_path / "tiny.yaml", data)
    run_script("train.py", config, repo_root)

    manager = CheckpointManager(str(ckpt), "DeepSpeech", 3)
    numbered = manager.numbered()
    assert 1 <= len(numbered) <= 3, numbered  # keep_checkpoint_max = 3
    assert os.path.isfile(manager.best_path)
    values, state = load_checkpoint(numbered[-1])
    assert state.epoch == 2 and state.batches_done == 0 and state.global_step == 4
    # Optimizer state is saved under the original training cell's names.
    for name in ("moment1.conv.conv1.weight", "moment2.fc.module.weight", "beta1_power", "learning_rate"):
        assert name in values
    np.testing.assert_allclose(values["learning_rate"].asnumpy(),
                               learning_rate_for_epoch(config_from_dict(data), 1), rtol=1e-6)

    records = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(0 <= r["val_wer"] <= 100 + 1e-9 for r in epochs)
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) for r in steps)
    assert (ckpt / "train_log.png").stat().st_size > 1000

    # eval.py picks the best checkpoint and scores every utterance exactly once.
    proc = run_script("eval.py", config, repo_root)
    report = json.loads((ckpt / "eval_report.json").read_text())
    assert report["num_utterances"] == len(SHORT_IDS)
    assert sorted(u["id"] for u in report["utterances"]) == sorted(SHORT_IDS)
    assert "WER" in proc.stdout
    assert 0 <= report["cer"] and 0 <= report["wer"]


@pytest.mark.slow
def test_kill_minus_nine_then_resume_equals_an_uninterrupted_run(short_manifest, tmp_path, repo_root):
    epochs = 2  # 2 batches per epoch: 4 optimizer steps in all
    straight = write_yaml(tmp_path / "straight.yaml", small_config_dict(
        short_manifest, tmp_path / "straight", TrainingConfig={"epochs": epochs}))
    run_script("train.py", straight, repo_root)

    ckpt = tmp_path / "killed"
    killed = write_yaml(tmp_path / "killed.yaml", small_config_dict(
        short_manifest, ckpt, TrainingConfig={"epochs": epochs}))
    proc = subprocess.Popen([sys.executable, "train.py", "-c", str(killed)], cwd=repo_root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manager = CheckpointManager(str(ckpt), "DeepSpeech", 3)
    deadline = time.time() + 600
    try:
        # Kill in the middle of the first epoch, right after its first mid-epoch checkpoint.
        while time.time() < deadline and proc.poll() is None:
            if manager.latest():
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = manager.latest()
    assert first is not None, "no checkpoint was written before the deadline"
    _, state = load_checkpoint(first)
    assert state.global_step < 2 * epochs, "the run finished before it could be killed"

    resumed = run_script("train.py", killed, repo_root)
    assert "resuming from" in resumed.stdout
    want = model_weights(CheckpointManager(str(tmp_path / "straight"), "DeepSpeech", 3).latest())
    got = model_weights(manager.latest())
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # The first epoch's mean loss covers the steps before the kill too.
    assert epoch_losses(ckpt) == epoch_losses(tmp_path / "straight")


def epoch_losses(ckpt: Path) -> dict:
    records = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    return {r["epoch"]: r["train_loss"] for r in records if r["kind"] == "epoch"}


def saved_values(trainer) -> dict:
    from mindaudio.checkpoint import training_parameters

    return {name: value.asnumpy().copy() for name, value in training_parameters(trainer.model, trainer.optimizer)}


@pytest.mark.slow
def test_steps_with_non_finite_gradients_are_skipped_and_counted(short_manifest, tmp_path):
    from mindaudio.training.trainer import Trainer

    # A loss scale of 3e38 overflows every gradient to inf in float32, as fp16 overflow would.
    data = small_config_dict(short_manifest, tmp_path / "ckpt", OptimConfig={"loss_scale": 3e38})
    config = config_from_dict(data)
    trainer = Trainer(config, progress=False)
    before = saved_values(trainer)
    result = trainer.run()
    assert result.state.skipped_steps == 2 and result.state.global_step == 0
    after = saved_values(trainer)
    # Weights, BatchNorm's running statistics (the forward passes moved them) and Adam's state.
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.slow
def test_poisoned_audio_changes_no_saved_value(short_manifest, tmp_path, librispeech_mini):
    import soundfile

    from mindaudio.training.trainer import Trainer

    # Every utterance with NaN samples in its audio (as a corrupt float WAV has): every step is
    # skipped, and no value a checkpoint holds may change.
    poisoned = []
    for utterance_id, audio, text, *_ in extracted_utterances(librispeech_mini):
        if utterance_id in SHORT_IDS:
            signal, rate = soundfile.read(str(audio), dtype="float32")
            signal[len(signal) // 3] = np.nan
            path = tmp_path / f"{utterance_id}.wav"
            soundfile.write(str(path), signal, rate, subtype="FLOAT")
            poisoned.append((utterance_id, path, text))
    manifest = write_manifest_with_transcripts(tmp_path / "poisoned", poisoned)
    config = config_from_dict(small_config_dict(manifest, tmp_path / "ckpt"))
    trainer = Trainer(config, progress=False)
    before = saved_values(trainer)
    result = trainer.run()
    assert result.state.skipped_steps == 2 and result.state.global_step == 0
    saved = model_weights(result.last_checkpoint)
    assert set(saved) == set(before)
    for name in before:
        np.testing.assert_array_equal(saved[name], before[name], err_msg=name)


def test_learning_rate_is_annealed_per_epoch(short_manifest, tmp_path):
    config = config_from_dict(small_config_dict(short_manifest, tmp_path, OptimConfig={
        "learning_rate": 0.01, "learning_anneal": 2.0}))
    assert [learning_rate_for_epoch(config, e) for e in range(3)] == [0.01, 0.005, 0.0025]


def test_a_second_run_on_the_same_ckpt_path_is_refused_before_it_touches_anything(short_manifest, tmp_path):
    from mindaudio.training.run_lock import LOCK_NAME, RunLockError
    from mindaudio.training.trainer import Trainer

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from mindaudio.training.run_lock import RunLock; lock = RunLock(sys.argv[2]).acquire(); "
         "print('held', flush=True); sys.stdin.readline(); lock.release()",
         str(Path(__file__).resolve().parents[1]), str(ckpt)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # The first run's checkpoint being written right now.
        in_progress = ckpt / ".partial-1-DeepSpeech-e000-s00000001.ckpt"
        in_progress.write_bytes(b"x")
        config = config_from_dict(small_config_dict(short_manifest, ckpt))
        with pytest.raises(RunLockError, match=f"pid {holder.pid}"):
            Trainer(config, progress=False)
        assert in_progress.exists()
        assert sorted(p.name for p in ckpt.iterdir()) == sorted([in_progress.name, LOCK_NAME])
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    assert not (ckpt / LOCK_NAME).exists()
