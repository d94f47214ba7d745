"""The training loop: epochs of bucketed batches, checkpoints, logs and validation."""
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from mindaudio.checkpoint import (CheckpointManager, TrainState, load_checkpoint, load_model_weights,
                                  restore_training, state_at_step,
                                  training_parameters)
from mindaudio.config import Config, check_files
from mindaudio.data.augment import Augmentation
from mindaudio.data.dataset import build_dataset, load_split, make_sampler
from mindaudio.data.features import hop_size
from mindaudio.data.statistics import manifest_statistics
from mindaudio.data.text import CharTokenizer
from mindaudio.evaluation import evaluate_split
from mindaudio.models.build import build_model
from mindaudio.models.deepspeech2 import output_length
from mindaudio.runtime.collectives import CollectiveError, check_same_on_all_ranks, mean_over_ranks
from mindaudio.runtime.device import Runtime, setup_runtime
from mindaudio.training.plot import plot_training_log
from mindaudio.training.precompile import precompile
from mindaudio.training.run_lock import RunLock
from mindaudio.training.train_step import build_update, dynamic_inputs
from mindaudio.training.validation import validate_shared

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"


@dataclass
class TrainResult:
    state: TrainState
    last_checkpoint: Optional[str]
    best_checkpoint: Optional[str]
    log_path: str
    is_main: bool = True  # False on data-parallel ranks other than 0, which write nothing
    # (audio path, reason) of every utterance the dataset could not use, once each (this process's
    # share under data parallel); their batches' steps were skipped.
    skipped_utterances: List[Tuple[str, str]] = field(default_factory=list)


def learning_rate_for_epoch(config: Config, epoch: int) -> float:
    """The yaml's rate divided by `learning_anneal` once per finished epoch."""
    optim = config.OptimConfig
    return optim.learning_rate / (optim.learning_anneal ** epoch)


class JsonLinesLog:
    """Append-only training log, one JSON object a line; only the main rank writes."""

    def __init__(self, path: str, enabled: bool):
        self.path = path
        self.enabled = enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record["time"] = round(time.time(), 3)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class Trainer:
    """Builds everything a run needs from the config, then `run()` trains to the last epoch."""

    def __init__(self, config: Config, progress: bool = True):
        self.config = config
        self.progress = progress
        train_cfg, ckpt_cfg = config.TrainingConfig, config.CheckpointConfig
        check_files(config, ["TrainingConfig.train_manifest", "TrainingConfig.val_manifest", "Pretrained_model",
                            "CheckpointConfig.resume_from"])
        self.runtime: Runtime = setup_runtime(config.runtime, train_cfg.seed, log_dir=ckpt_cfg.ckpt_path)
        # Rank 0 writes every file of the run; it holds the directory until the run ends.
        self.lock = RunLock(ckpt_cfg.ckpt_path).acquire() if self.runtime.is_main else None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        config = self.config
        train_cfg, ckpt_cfg, optim = config.TrainingConfig, config.CheckpointConfig, config.OptimConfig
        self.progress = self.progress and self.runtime.is_main
        self.tokenizer = CharTokenizer.from_config(config)

        # Training batches only: validation and evaluation never augment.
        self.augmentation = Augmentation.from_config(config.AugmentationConfig, config.SpectConfig.sample_rate,
                                                     train_cfg.seed)
        speed_range = self.augmentation.speed_range if self.augmentation else (1.0, 1.0)
        self.train_split = load_split(train_cfg.train_manifest, self.tokenizer, config.SpectConfig,
                                      speed_range=speed_range,
                                      bucket_boundaries=train_cfg.bucket_boundaries,
                                      max_duration=train_cfg.max_duration,
                                      output_frames=output_length)
        split = self.train_split
        self.sampler = make_sampler(split, train_cfg.batch_size, train=True, batch_frames=train_cfg.batch_frames,
                                    seed=train_cfg.seed, sortagrad=train_cfg.sortagrad, rank=self.runtime.rank,
                                    world_size=self.runtime.world_size,
                                    accumulation_steps=train_cfg.accumulation_steps)
        self.val_split = None
        if train_cfg.val_manifest:
            self.val_split = load_split(train_cfg.val_manifest, self.tokenizer, config.SpectConfig,
                                        bucket_boundaries=train_cfg.bucket_boundaries)
        if self.runtime.is_main:
            print(self.train_split.summary())
            if train_cfg.batch_frames:
                used = sorted({batch.bucket for batch in self.sampler.batches(0)})
                sizes = ", ".join(f"{split.edges[b]:g} s: {self.sampler.batch_size[b]}" for b in used)
                print(f"batches by frames (TrainingConfig.batch_frames {train_cfg.batch_frames}): "
                      f"utterances per batch by bucket ({sizes}); {len(self.sampler)} batches per epoch")
            if self.val_split is not None:
                print(self.val_split.summary())

        # SpectConfig.normalisation fixed: per-bin statistics of the training recordings, stored in
        # the model (a resumed or pretrained checkpoint's own values replace them).
        statistics = (manifest_statistics(train_cfg.train_manifest, config.SpectConfig)
                      if config.SpectConfig.normalisation == "fixed" else None)
        self.model = build_model(config, seed=train_cfg.seed, feature_statistics=statistics)
        self.update = build_update(self.model, optim, self.runtime.world_size if self.runtime.distributed else 1,
                                   dynamic_shapes=config.runtime.dynamic_shapes)
        if config.runtime.dynamic_shapes:
            # Validation's forward passes as one graph too: each static one keeps its activations
            # (full model, 16 x 1200 frames: 3.4 GB) for as long as it lives.
            self.model.set_inputs(*dynamic_inputs(self.model.num_freq_bins)[:2])
        self.optimizer = self.update.optimizer
        # Utterances the dataset could not use: path -> reason, for the run's summary.
        self.skipped_utterances: Dict[str, str] = {}

        self.checkpoints = CheckpointManager(ckpt_cfg.ckpt_path, ckpt_cfg.ckpt_file_name_prefix,
                                             ckpt_cfg.keep_checkpoint_max)
        self.log = JsonLinesLog(os.path.join(ckpt_cfg.ckpt_path, LOG_NAME), self.runtime.is_main)
        self.state = self._initial_state()
        if self.runtime.distributed:
            self._check_ranks_agree()

    def close(self) -> None:
        """Release the checkpoint directory (idempotent; `run` does it when it ends)."""
        if self.lock is not None:
            self.lock.release()

    def _initial_state(self) -> TrainState:
        """Resume from `resume_from`, else from the newest checkpoint that reads back intact when
        allowed; else start fresh, from `Pretrained_model`'s weights (partly, if need be) if one is given."""
        cfg = self.config
        if self.runtime.is_main:
            self.checkpoints.remove_partials()
        found = None
        if cfg.CheckpointConfig.resume_from:
            found = (cfg.CheckpointConfig.resume_from, *load_checkpoint(cfg.CheckpointConfig.resume_from))
        elif cfg.CheckpointConfig.resume:
            found = self.checkpoints.latest_loadable()
        if found:
            source, values, state = found
            optim = cfg.OptimConfig
            # The original's Adam saw gradients divided by its loss scale; ours does only when told to.
            moment_scale = 1.0 if optim.divide_by_loss_scale_twice else optim.loss_scale
            resumed = restore_training(self.model, self.optimizer, source, values, state,
                                       original_moment_scale=moment_scale)
            state = resumed.state
            if resumed.original:
                state = state_at_step(state.global_step, len(self.sampler), cfg.TrainingConfig.accumulation_steps,
                                      cfg.TrainingConfig.seed)
                if self.runtime.is_main:
                    logger.warning(
                        "%s is the original's training cell: weights, Adam moments%s and step %d continue; "
                        "not used: %s; its learning_rate is replaced by OptimConfig's schedule; derived from "
                        "the step: %d epoch(s) and %d batch(es) done", source,
                        f" (rescaled for loss_scale {moment_scale:g})" if moment_scale != 1.0 else "",
                        state.global_step, ", ".join(resumed.not_used) or "nothing", state.epoch,
                        state.batches_done)
            elif state.seed != cfg.TrainingConfig.seed:
                logger.warning("resuming %s trained with seed %d; TrainingConfig.seed is %d",
                               source, state.seed, cfg.TrainingConfig.seed)
            if self.runtime.is_main:
                print(f"resuming from {source}: epoch {state.epoch}, batch {state.batches_done}, "
                      f"step {state.global_step}")
            return state
        if cfg.Pretrained_model:
            loaded = load_model_weights(self.model, cfg.Pretrained_model, partial=True)
            if self.runtime.is_main:
                print(f"loaded {len(loaded.loaded)} model parameters from {cfg.Pretrained_model} "
                      f"(skipped {len(loaded.training_entries)} optimizer entries)")
        return TrainState(seed=cfg.TrainingConfig.seed)

    def _check_ranks_agree(self) -> None:
        """Every rank must resume from the same state and plan the same number of batches, or
        the gradient all-reduce would pair unrelated steps (or wait forever)."""
        state = self.state
        check_same_on_all_ranks(
            {"epoch": state.epoch, "batches_done": state.batches_done, "global_step": state.global_step,
             "batches_per_epoch": len(self.sampler), "train_utterances": len(self.train_split.utterances),
             "seed": self.config.TrainingConfig.seed},
            self.runtime.rank,
            hint="every rank must read the same manifests and see the same CheckpointConfig.ckpt_path "
                 "(a shared file system when the ranks run on several hosts)")

    def _save(self, best: bool = False) -> str:
        if not self.runtime.is_main:
            return ""
        params = training_parameters(self.model, self.optimizer)
        if best:
            return self.checkpoints.save_best(params, self.state)
        return self.checkpoints.save(params, self.state)

    def run(self) -> TrainResult:
        try:
            return self._run()
        except RuntimeError as err:
            if self.runtime.distributed and _is_collective_failure(err):
                raise CollectiveError(
                    f"rank {self.runtime.rank} of {self.runtime.world_size}: lost contact with another rank "
                    f"in epoch {self.state.epoch + 1}, step {self.state.global_step} (a rank stopped, or was "
                    f"silent for longer than MS_NODE_TIMEOUT, 30 s by default); see the other ranks' "
                    f"output for the cause. Resume from the last checkpoint.") from err
            raise
        finally:
            self.close()

    def _report_problems(self, problems, reported: int, epoch_skipped: Dict[str, str]) -> int:
        """Warn once per utterance the dataset newly recorded as unusable; returns how many of
        `problems` are reported now."""
        fresh = list(problems)[reported:]
        for path, reason in fresh:
            logger.warning("utterance skipped (its batch's step is skipped): %s: %s", path, reason)
            epoch_skipped[path] = reason
            self.skipped_utterances[path] = reason
        return reported + len(fresh)

    def _run(self) -> TrainResult:
        cfg = self.config.TrainingConfig
        ckpt_every = self.config.CheckpointConfig.save_checkpoint_steps
        last_path = None
        seconds_per_frame = hop_size(self.config.SpectConfig) / self.config.SpectConfig.sample_rate
        update = self.update
        if self.runtime.compile_cache_dir and self.state.epoch < cfg.epochs:
            # Every shape compiled now, in a fixed order, so that a run that compiled them before
            # loads them from the cache (the plan's shapes are the same every epoch).
            precompile(self.runtime.compile_cache_dir, self.config, self.runtime.world_size, update,
                       self.model, self.train_split, self.sampler.batches(self.state.epoch), self.val_split,
                       log=print if self.runtime.is_main else (lambda _: None))
        while self.state.epoch < cfg.epochs:
            epoch = self.state.epoch
            lr = learning_rate_for_epoch(self.config, epoch)
            update.set_learning_rate(lr)
            batches = self.sampler.batches(epoch, start=self.state.batches_done)
            total = len(self.sampler)
            dataset = build_dataset(self.train_split, self.config.SpectConfig, batches,
                                    self.tokenizer.blank_id, cfg.num_workers,
                                    augmentation=self.augmentation, epoch=epoch)
            # The dataset records (path, reason) of audio it cannot use, and fills that
            # utterance's features with NaN so that its step is skipped.
            problems, reported, epoch_skipped = dataset.problems, 0, {}
            bar = tqdm(total=total, initial=self.state.batches_done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=not self.progress, dynamic_ncols=True)
            window_audio, window_start = 0.0, time.perf_counter()
            pending_losses = []
            for batch in dataset.create_tuple_iterator(num_epochs=1):
                features, feature_lengths, labels, label_lengths, _ = batch
                loss, _ = update.add_micro_batch(features, feature_lengths, labels, label_lengths)
                pending_losses.append(loss)
                window_audio += float(feature_lengths.asnumpy().sum()) * seconds_per_frame
                self.state.batches_done += 1
                bar.update(1)
                reported = self._report_problems(problems, reported, epoch_skipped)
                if update.micro_batches < cfg.accumulation_steps and self.state.batches_done < total:
                    continue
                grad_norm = update.finish()
                if grad_norm is not None:
                    self.state.global_step += 1
                    self._add_epoch_losses(pending_losses)
                else:
                    grad_norm = math.nan
                    self.state.skipped_steps += 1
                    logger.warning("step skipped: loss or gradients not finite (%d skipped so far)",
                                   self.state.skipped_steps)
                step_loss = float(np.mean(pending_losses))
                pending_losses = []
                elapsed = time.perf_counter() - window_start
                speed = window_audio / elapsed if elapsed > 0 else 0.0
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{speed:.1f}")
                if self.state.global_step % cfg.log_interval == 0 or self.state.batches_done == total:
                    if self.runtime.distributed:
                        # The log speaks for the global batch: mean loss, summed throughput.
                        step_loss, speed = mean_over_ranks([step_loss, speed])
                        speed *= self.runtime.world_size
                    self.log.write(kind="step", epoch=epoch, step=self.state.global_step, loss=step_loss,
                                   grad_norm=grad_norm, lr=lr, audio_seconds_per_second=speed,
                                   skipped_steps=self.state.skipped_steps)
                    window_audio, window_start = 0.0, time.perf_counter()
                if ckpt_every and self.state.global_step % ckpt_every == 0 and self.state.batches_done < total:
                    last_path = self._save()
            bar.close()
            self._report_problems(problems, reported, epoch_skipped)
            last_path = self._end_epoch(epoch, lr, epoch_skipped) or last_path
        best = self.checkpoints.best_path if os.path.exists(self.checkpoints.best_path) else None
        if self.runtime.is_main:
            plot_training_log(self.log.path)
        skipped = sorted(self.skipped_utterances.items())
        if skipped:
            print(f"{len(skipped)} utterance(s) skipped: unreadable audio "
                  f"({', '.join(path for path, _ in skipped[:3])}{' ...' if len(skipped) > 3 else ''})")
        return TrainResult(self.state, last_path, best, self.log.path, self.runtime.is_main, skipped)

    def _add_epoch_losses(self, losses: List[float]) -> None:
        """Add an applied update's micro-batch losses to the epoch's running sum. The sum lives
        in the train state (so a resumed epoch's mean still covers the whole epoch) and is kept
        in float32, the precision a checkpoint stores it in, so a resumed run's mean is exactly
        an uninterrupted run's."""
        total = np.float32(self.state.epoch_loss_sum)
        for loss in losses:
            total = np.float32(total + np.float32(loss))
        self.state.epoch_loss_sum = float(total)
        self.state.epoch_loss_count += len(losses)

    def _end_epoch(self, epoch: int, lr: float, skipped: Dict[str, str]) -> Optional[str]:
        state = self.state
        train_loss = state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else math.nan
        record = {"kind": "epoch", "epoch": epoch, "step": state.global_step, "lr": lr,
                  "train_loss": train_loss, "skipped_steps": state.skipped_steps,
                  "skipped_utterances": len(skipped)}
        if self.runtime.distributed:
            record["train_loss"] = float(mean_over_ranks([record["train_loss"]])[0])
        if skipped:
            print(f"epoch {epoch + 1}: {len(skipped)} utterance(s) skipped: unreadable audio")
        val_wer = None
        if self.val_split is not None:
            if self.runtime.distributed:
                # Every rank decodes a share, with rank 0's BatchNorm statistics; counts are summed.
                val_wer, val_cer = validate_shared(self.model, self.val_split, self.config, self.tokenizer,
                                                   self.runtime, self.progress)
            else:
                result = evaluate_split(self.model, self.val_split, self.config, self.tokenizer, self.progress)
                val_wer, val_cer = result.wer, result.cer
            self.model.set_train(True)
            record.update(val_wer=val_wer, val_cer=val_cer)
            if self.runtime.is_main:
                print(f"epoch {epoch + 1}: train loss {record['train_loss']:.3f}, "
                      f"validation WER {val_wer:.2f}% CER {val_cer:.2f}%")
        state.epoch = epoch + 1
        state.batches_done = 0
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
        improved = val_wer is not None and val_wer < state.best_wer
        if improved:
            state.best_wer = val_wer
            self._save(best=True)
        self.log.write(**record)
        # Last: a run resumes from this checkpoint at the next epoch, so everything the epoch's end
        # produces (the best checkpoint, the epoch's log record) must be on disk before it. A kill
        # before it resumes inside this epoch and redoes its end (the record is then logged twice).
        return self._save() or None


def _is_collective_failure(err: RuntimeError) -> bool:
    """MindSpore reports a peer that stopped answering as a failed communication kernel."""
    text = str(err)
    return any(name in text for name in ("AllReduce", "Broadcast", "AllGather", "ReduceScatter"))


def train(config: Config, progress: bool = True) -> TrainResult:
    return Trainer(config, progress=progress).run()


__all__ = ["Trainer", "TrainResult", "train", "learning_rate_for_epoch"]
