"""Run a model over a manifest, decode (greedy by default, or as EvalConfig says), and score
WER/CER, every utterance exactly once.

An utterance that cannot be scored (its audio could not be read, as the dataset records in its
`problems`, or the model's output for it is not finite) is left out of the scores and named,
with the reason, in the printed summary and the JSON report; the others are scored exactly as
they would be without it.

What `eval.py` prints keeps the original's (MindAudio examples/deepspeech2/eval.py) format, which
users grep: per utterance

    Ref: <reference, lower case>
    Hyp: <hypothesis, lower case>
    WER: <word edits / reference words> CER: <character edits / reference characters> <blank line>

and at the end `Test Summary \\tAverage WER 10.240\\tAverage CER 3.461\\t` (corpus rates in percent).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, TextIO, Tuple

import numpy as np
from tqdm import tqdm

import mindspore as ms

from mindaudio.checkpoint import CheckpointManager, load_model_weights
from mindaudio.config import Config, ConfigError, SpectConfig, UserError, check_files, check_writable_dir
from mindaudio.data.dataset import Split, build_dataset, load_split, make_sampler
from mindaudio.data.features import num_freq_bins
from mindaudio.data.manifest import Utterance
from mindaudio.data.sampler import Batch
from mindaudio.data.text import CharTokenizer
from mindaudio.decoding.greedy import GreedyDecoder
from mindaudio.decoding.select import build_decoder
from mindaudio.inference import forward_compile_cache
from mindaudio.metrics import char_error_rate, error_counts, word_error_rate
from mindaudio.models.build import build_model
from mindaudio.runtime.compile_cache import Graph, shapes_to_compile
from mindaudio.runtime.device import setup_runtime

NON_FINITE_OUTPUT = "the model's output is not finite (NaN or inf): corrupt audio, or weights that are NaN"


class EvaluationError(UserError):
    """An evaluation that cannot give a result (nothing left to score, a report that cannot be
    written); the message names the manifest or the output file."""


@dataclass
class EvalResult:
    wer: float  # percent, over the scored utterances
    cer: float  # percent
    utterances: List[Dict[str, str]] = field(default_factory=list)  # id, reference, hypothesis
    excluded: List[Dict[str, str]] = field(default_factory=list)  # id, path, reason
    audio_seconds: float = 0.0  # of the scored utterances
    wall_seconds: float = 0.0
    decoder: str = "greedy"

    @property
    def num_utterances(self) -> int:
        """Utterances scored (the excluded ones not counted)."""
        return len(self.utterances)

    def report(self) -> Dict[str, object]:
        return {"wer": self.wer, "cer": self.cer, "num_utterances": self.num_utterances,
                "num_excluded": len(self.excluded), "excluded": self.excluded,
                "audio_seconds": round(self.audio_seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
                "decoder": self.decoder, "utterances": self.utterances}


def transcribe_batches(model: ms.nn.Cell, batches: Iterable[Dict[str, np.ndarray]], labels: Sequence[str],
                       blank_id: int, progress: bool = True, total: Optional[int] = None,
                       decoder=None, non_finite: Optional[Set[int]] = None) -> Dict[int, str]:
    """Transcripts by utterance index for every batch (dicts of numpy arrays: `features`
    (B, 1, F, T) float32, `feature_lengths` (B,) int32, `indices` (B,) int32), decoded by
    `decoder` (anything with `decode_batch(logits, lengths)`; default greedy).

    non_finite: when given, the indices of utterances whose logits (over their valid frames) are
    not all finite are added to it and left out of the result: decoding them would give a
    confident transcript of nothing. Without it every utterance is decoded.
    """
    decoder = decoder if decoder is not None else GreedyDecoder(labels, blank_id)
    model.set_train(False)
    hypotheses: Dict[int, str] = {}
    for batch in tqdm(batches, total=total, desc="decode", unit="batch", disable=not progress, leave=False):
        logits, out_lengths = model(ms.Tensor(batch["features"]), ms.Tensor(batch["feature_lengths"]))
        logits, out_lengths = logits.asnumpy(), out_lengths.asnumpy()
        indices = batch["indices"].tolist()
        keep = list(range(len(indices)))
        if non_finite is not None:
            finite = [bool(np.isfinite(logits[: int(out_lengths[b]), b]).all()) for b in keep]
            non_finite.update(indices[b] for b in keep if not finite[b])
            keep = [b for b in keep if finite[b]]
        if len(keep) < len(indices):
            logits, out_lengths = logits[:, keep], out_lengths[keep]
        texts = decoder.decode_batch(logits, out_lengths)
        for b, text in zip(keep, texts):
            if indices[b] in hypotheses:
                raise RuntimeError(f"utterance {indices[b]} was decoded twice: the batch plan is wrong")
            hypotheses[indices[b]] = text
    return hypotheses


def excluded_utterances(utterances: Sequence[Utterance], problems: Iterable[Tuple[str, str]],
                        non_finite: Iterable[int]) -> Dict[int, str]:
    """Reason by utterance index for those that cannot be scored.

    problems: (audio path, reason) pairs the dataset recorded for audio it could not use;
    non_finite: indices whose model output was not finite. A dataset problem gives the reason
    when both apply.
    """
    reasons = {os.path.normpath(path): reason for path, reason in problems}
    excluded = {index: NON_FINITE_OUTPUT for index in non_finite}
    for index, utterance in enumerate(utterances):
        reason = reasons.get(os.path.normpath(utterance.audio_path))
        if reason is not None:
            excluded[index] = reason
    return excluded


def score(utterances: Sequence[Utterance], hypotheses: Dict[int, str], references: Sequence[str],
          wall_seconds: float = 0.0, excluded: Optional[Dict[int, str]] = None,
          left_out: Sequence[Tuple[str, str, str]] = ()) -> EvalResult:
    """WER/CER over `utterances` (indexed as in `hypotheses`) except the `excluded` ones (index ->
    reason), which are listed in the result instead; `references` are the label-space transcripts
    (`Split.references`: normalised as the training targets are); `left_out`: (id, path, reason)
    of utterances the split dropped when it read the manifest, listed with the excluded ones."""
    excluded = excluded or {}
    scored = [i for i in range(len(utterances)) if i not in excluded]
    missing = [utterances[i].id for i in scored if i not in hypotheses]
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) were never decoded, e.g. {missing[0]}")
    excluded_rows = [{"id": utterances[i].id, "path": utterances[i].audio_path, "reason": excluded[i]}
                     for i in sorted(excluded)]
    excluded_rows += [{"id": uid, "path": path, "reason": reason} for uid, path, reason in left_out]
    if not scored:
        raise EvaluationError(f"none of the {len(utterances)} utterances could be scored: "
                              + "; ".join(f"{row['path']}: {row['reason']}" for row in excluded_rows[:3]))
    refs = [references[i] for i in scored]
    hyps = [hypotheses[i] for i in scored]
    rows = [{"id": utterances[i].id, "reference": ref, "hypothesis": hyp}
            for i, ref, hyp in zip(scored, refs, hyps)]
    return EvalResult(wer=word_error_rate(refs, hyps), cer=char_error_rate(refs, hyps), utterances=rows,
                      excluded=excluded_rows, audio_seconds=float(sum(utterances[i].duration for i in scored)),
                      wall_seconds=wall_seconds)


def forward_graphs(model: ms.nn.Cell, batches: Sequence[Batch], spect: SpectConfig) -> List[Graph]:
    """The model's forward pass for every input shape of `batches` (features (B, 1, F, T)
    float32, lengths (B,) int32), sorted; one graph in all for a model given dynamic inputs
    (`RuntimeConfig.dynamic_shapes`), whose one graph serves every shape."""
    shapes = shapes_to_compile(model, sorted({(len(batch.indices), batch.frames) for batch in batches}))
    freq = num_freq_bins(spect)
    return [Graph(f"forward {size}x{frames}", model,
                  (ms.Tensor(np.zeros((size, 1, freq, frames), np.float32)), ms.Tensor(np.ones(size, np.int32))))
            for size, frames in shapes]


def evaluate_split(model: ms.nn.Cell, split: Split, config: Config, tokenizer: CharTokenizer,
                   progress: bool = True, decoder=None, compile_cache_dir: str = "",
                   log: Callable[[str], None] = print) -> EvalResult:
    """WER/CER of `model` over every utterance of `split` exactly once, batched by length
    with `EvalConfig.batch_size`; greedy unless another `decoder` is given. Utterances whose
    audio the dataset could not use, or whose model output is not finite, are excluded and listed.
    compile_cache_dir: compile the plan's shapes first, loading them from this compile cache when
    an earlier evaluation of the same shapes stored them ('' = compile each at its first batch);
    `log` gets one line saying which."""
    start = time.perf_counter()
    batches = make_sampler(split, config.EvalConfig.batch_size, train=False).batches(0)
    cache = forward_compile_cache(compile_cache_dir, config)
    if cache is not None:
        model.set_train(False)
        log(f"model: {cache.compile_all(forward_graphs(model, batches, config.SpectConfig)).describe()}")
    dataset = build_dataset(split, config.SpectConfig, batches, tokenizer.blank_id,
                            config.TrainingConfig.num_workers)
    non_finite: Set[int] = set()
    hypotheses = transcribe_batches(model, dataset.create_dict_iterator(num_epochs=1, output_numpy=True),
                                    config.labels, tokenizer.blank_id, progress=progress, total=len(batches),
                                    decoder=decoder, non_finite=non_finite)
    # Read after the iteration: the dataset's workers record problems as they meet them.
    excluded = excluded_utterances(split.utterances, list(getattr(dataset, "problems", [])), non_finite)
    result = score(split.utterances, hypotheses, list(split.references),
                   time.perf_counter() - start, excluded, split.left_out)
    if decoder is not None:
        result.decoder = decoder.describe()
    return result


# ---------------------------------------------------------------- what eval.py prints


def format_utterance(reference: str, hypothesis: str) -> str:
    """The original's lines for one utterance: `Ref: ...`, `Hyp: ...` (lower case) and
    `WER: w CER: c ` with the utterance's own rates as fractions, then an empty line."""
    counts = error_counts(reference, hypothesis)
    return f"Ref: {reference.lower()}\nHyp: {hypothesis.lower()}\nWER: {counts.wer} CER: {counts.cer} \n"


def format_summary(wer: float, cer: float) -> str:
    """The original's summary line (tabs included): corpus WER and CER in percent, 3 decimals."""
    return f"Test Summary \tAverage WER {wer:.3f}\tAverage CER {cer:.3f}\t"


def summary_lines(result: EvalResult) -> List[str]:
    """The excluded utterances (path and reason), a plain-words line, and `format_summary`'s."""
    lines = []
    if result.excluded:
        total = result.num_utterances + len(result.excluded)
        lines.append(f"excluded {len(result.excluded)} of {total} utterances (not scored):")
        lines.extend(f"  {row['path']}: {row['reason']}" for row in result.excluded)
    lines.append(f"{result.num_utterances} utterances ({result.audio_seconds / 3600:.2f} h) scored: "
                 f"WER {result.wer:.2f}%  CER {result.cer:.2f}%")
    lines.append(format_summary(result.wer, result.cer))
    return lines


# ---------------------------------------------------------------- the JSON report


def report_path(save_output: str) -> str:
    """`save_output` + `.json` unless it already ends so."""
    return save_output if save_output.endswith(".json") else save_output + ".json"


def check_report_writable(save_output: str, source: str) -> str:
    """Make sure the report can be written, before any work: create its folder and a probe file
    beside it. Returns the report's path; raises ConfigError naming `EvalConfig.save_output`."""
    if not save_output.strip():
        raise ConfigError(f"{source}: EvalConfig.save_output is empty: give the report's path")
    path = report_path(save_output)
    where = f"{source}: EvalConfig.save_output: cannot write the report {path}"
    if os.path.isdir(path):
        raise ConfigError(f"{where}: it is a directory")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), where)
    return path


def write_report(result: EvalResult, save_output: str) -> str:
    """Write the JSON report to `report_path(save_output)` atomically; returns the path."""
    path = report_path(save_output)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result.report(), f, indent=1)
    os.replace(tmp, path)
    return path


def finish_evaluation(result: EvalResult, save_output: str, source: str, out: TextIO,
                      print_utterances: bool = True) -> str:
    """Print the result (per-utterance lines if asked, then the summary) and only then write the
    report, so a report that cannot be written never hides the scores. Returns the report's path;
    raises EvaluationError naming `EvalConfig.save_output` when the write fails."""
    if print_utterances:
        for row in result.utterances:
            print(format_utterance(row["reference"], row["hypothesis"]), file=out)
    for line in summary_lines(result):
        print(line, file=out)
    out.flush()
    try:
        path = write_report(result, save_output)
    except OSError as err:
        raise EvaluationError(f"{source}: EvalConfig.save_output: the scores above were not saved: "
                              f"cannot write {report_path(save_output)}: {err.strerror or err}") from None
    print(f"report: {path}", file=out)
    return path


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


def run_evaluation(config: Config, progress: bool = True, print_utterances: bool = True,
                   out: Optional[TextIO] = None) -> Tuple[EvalResult, str]:
    """What `eval.py` does: check the output location, load the model, score
    `EvalConfig.test_manifest`, print to `out` (default stdout) the original's per-utterance
    lines (unless `print_utterances` is False), the excluded utterances and the summary line,
    then write the report. Returns the result and the report's path."""
    out = out if out is not None else sys.stdout
    check_files(config, ["EvalConfig.test_manifest", "Pretrained_model", "EvalConfig.lm_path",
                         "EvalConfig.lm_unigrams"])
    if not config.EvalConfig.test_manifest:
        raise ConfigError(f"{config.source}: EvalConfig.test_manifest is empty")
    check_report_writable(config.EvalConfig.save_output, config.source)
    runtime = setup_runtime(config.runtime, config.TrainingConfig.seed)
    tokenizer = CharTokenizer.from_config(config)
    split = load_split(config.EvalConfig.test_manifest, tokenizer, config.SpectConfig,
                       bucket_boundaries=config.TrainingConfig.bucket_boundaries)
    print(split.summary(), file=out)
    path = checkpoint_to_evaluate(config)
    model = build_model(config)
    load_model_weights(model, path)
    decoder = build_decoder(config)
    print(f"evaluating {path} with {decoder.describe()} decoding", file=out)
    result = evaluate_split(model, split, config, tokenizer, progress, decoder=decoder,
                            compile_cache_dir=runtime.compile_cache_dir, log=lambda line: print(line, file=out))
    report = finish_evaluation(result, config.EvalConfig.save_output, config.source, out, print_utterances)
    return result, report
