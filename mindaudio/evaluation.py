"""Run a model over a manifest, decode (greedy by default, or as EvalConfig says), and score
WER/CER, every utterance exactly once."""
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

import mindspore as ms

from mindaudio.config import Config, ConfigError, check_files
from mindaudio.data.dataset import Split, build_dataset, load_split, make_sampler
from mindaudio.data.manifest import Utterance
from mindaudio.data.text import CharTokenizer
from mindaudio.models.build import build_model
from mindaudio.checkpoint import load_model_weights
from mindaudio.checkpoint import CheckpointManager
from mindaudio.runtime.device import setup_runtime
from mindaudio.decoding.decoder import GreedyDecoder, build_decoder
from mindaudio.metrics import char_error_rate, word_error_rate


@dataclass
class EvalResult:
    wer: float  # percent
    cer: float  # percent
    utterances: List[Dict[str, str]] = field(default_factory=list)  # id, reference, hypothesis
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    decoder: str = "greedy"

    @property
    def num_utterances(self) -> int:
        return len(self.utterances)

    def report(self) -> Dict[str, object]:
        return {"wer": self.wer, "cer": self.cer, "num_utterances": self.num_utterances,
                "audio_seconds": round(self.audio_seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
                "decoder": self.decoder, "utterances": self.utterances}


def transcribe_batches(model: ms.nn.Cell, batches: Iterable[Dict[str, np.ndarray]], labels: Sequence[str],
                       blank_id: int, progress: bool = True, total: Optional[int] = None,
                       decoder=None) -> Dict[int, str]:
    """Transcripts by utterance index for every batch (dicts of numpy arrays: `features`
    (B, 1, F, T) float32, `feature_lengths` (B,) int32, `indices` (B,) int32), decoded by
    `decoder` (anything with `decode_batch(logits, lengths)`; default greedy)."""
    decoder = decoder if decoder is not None else GreedyDecoder(labels, blank_id)
    model.set_train(False)
    hypotheses: Dict[int, str] = {}
    for batch in tqdm(batches, total=total, desc="decode", unit="batch", disable=not progress, leave=False):
        logits, out_lengths = model(ms.Tensor(batch["features"]), ms.Tensor(batch["feature_lengths"]))
        texts = decoder.decode_batch(logits.asnumpy(), out_lengths.asnumpy())
        for index, text in zip(batch["indices"].tolist(), texts):
            if index in hypotheses:
                raise RuntimeError(f"utterance {index} was decoded twice: the batch plan is wrong")
            hypotheses[index] = text
    return hypotheses


def score(utterances: Sequence[Utterance], hypotheses: Dict[int, str], references: Sequence[str],
          wall_seconds: float = 0.0) -> EvalResult:
    """WER/CER over `utterances` (indexed as in `hypotheses`); `references` are the label-space
    transcripts (upper-case, characters outside the labels removed) the model can produce."""
    missing = [u.id for i, u in enumerate(utterances) if i not in hypotheses]
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) were never decoded, e.g. {missing[0]}")
    order = range(len(utterances))
    refs = [references[i] for i in order]
    hyps = [hypotheses[i] for i in order]
    rows = [{"id": utterances[i].id, "reference": refs[i], "hypothesis": hyps[i]} for i in order]
    return EvalResult(wer=word_error_rate(refs, hyps), cer=char_error_rate(refs, hyps), utterances=rows,
                      audio_seconds=float(sum(u.duration for u in utterances)), wall_seconds=wall_seconds)


def write_report(result: EvalResult, save_output: str) -> str:
    """Write the JSON report to `save_output` (+ `.json` unless it already ends so); returns the path."""
    path = save_output if save_output.endswith(".json") else save_output + ".json"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result.report(), f, indent=1)
    os.replace(tmp, path)
    return path



def evaluate_split(model: ms.nn.Cell, split: Split, config: Config, tokenizer: CharTokenizer,
                   progress: bool = True, decoder=None) -> EvalResult:
    """WER/CER of `model` over every utterance of `split` exactly once, batched by length
    with `EvalConfig.batch_size`; greedy unless another `decoder` is given."""
    start = time.perf_counter()
    batches = make_sampler(split, config.EvalConfig.batch_size, train=False).batches(0)
    dataset = build_dataset(split, config.SpectConfig, batches, tokenizer.blank_id,
                            config.TrainingConfig.num_workers)
    hypotheses = transcribe_batches(model, dataset.create_dict_iterator(num_epochs=1, output_numpy=True),
                                    config.labels, tokenizer.blank_id, progress=progress, total=len(batches),
                                    decoder=decoder)
    references = [tokenizer.decode(label) for label in split.labels]
    result = score(split.utterances, hypotheses, references, time.perf_counter() - start)
    if decoder is not None:
        result.decoder = decoder.describe()
    return result


def checkpoint_to_evaluate(config: Config) -> str:
    """`Pretrained_model` when set, else the best (or, failing that, the newest) checkpoint of
    `CheckpointConfig.ckpt_path`."""
    if config.Pretrained_model:
        return config.Pretrained_model
    ckpt = config.CheckpointConfig
    manager = CheckpointManager(ckpt.ckpt_path, ckpt.ckpt_file_name_prefix, ckpt.keep_checkpoint_max)
    if os.path.isfile(manager.best_path):
        return manager.best_path
    latest = manager.latest()
    if latest is None:
        raise ConfigError(f"{config.source}: Pretrained_model is empty and CheckpointConfig.ckpt_path "
                          f"({ckpt.ckpt_path}) holds no checkpoint to evaluate")
    return latest


def run_evaluation(config: Config, progress: bool = True) -> Tuple[EvalResult, str]:
    """What `eval.py` does: load the model, score `EvalConfig.test_manifest`, write the report.
    Returns the result and the report's path."""
    check_files(config, ["EvalConfig.test_manifest", "Pretrained_model", "EvalConfig.lm_path",
                         "EvalConfig.lm_unigrams"])
    if not config.EvalConfig.test_manifest:
        raise ConfigError(f"{config.source}: EvalConfig.test_manifest is empty")
    setup_runtime(config.runtime, config.TrainingConfig.seed)
    tokenizer = CharTokenizer(config.labels)
    split = load_split(config.EvalConfig.test_manifest, tokenizer, config.SpectConfig,
                       bucket_boundaries=config.TrainingConfig.bucket_boundaries)
    print(split.summary())
    path = checkpoint_to_evaluate(config)
    model = build_model(config, config.EvalConfig.batch_size)
    load_model_weights(model, path)
    decoder = build_decoder(config)
    print(f"evaluating {path} with {decoder.describe()} decoding")
    result = evaluate_split(model, split, config, tokenizer, progress, decoder=decoder)
    report = write_report(result, config.EvalConfig.save_output)
    return result, report
