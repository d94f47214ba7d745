"""Grid-search the beam decoder's LM weight (alpha) and word bonus (beta) on a validation manifest.

    python scripts/tune_lm.py -c CONFIG --lm LM.arpa [--manifest VAL.json] [--checkpoint CKPT]
        [--alphas 0.3 0.5 0.8 1.2] [--betas 0 1 2 3] [--beam_width 32] [--output tune.json]
        [--Section.key VALUE ...]

The acoustic model runs over the manifest once; its log-probabilities are cached in an .npz
(--cache, default OUTPUT.npz, reused when the manifest, checkpoint and model match), then every
(alpha, beta) pair is decoded from the cache. Prints the table, greedy's and the LM-less beam's
WER for reference, and the best pair as EvalConfig overrides; writes everything to --output. Tune on validation data,
never on the test set you report.
"""
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindaudio.cli import parse_command_line, run_cli  # noqa: E402  (first: it quietens MindSpore's log)
from mindaudio.config import check_writable_dir  # noqa: E402
from mindaudio.config import ConfigError, check_files  # noqa: E402

DESCRIPTION = "Grid-search alpha and beta of the beam decoder with an n-gram LM on a validation manifest."


def collect_log_probs(config, checkpoint: str, manifest: str, progress: bool = True
                      ) -> Tuple[List[np.ndarray], List[str], List[str]]:
    """Per utterance of `manifest`: (T', C) float32 log-probabilities, reference text, id."""
    import mindspore as ms
    from tqdm import tqdm

    from mindaudio.data.dataset import build_dataset, load_split, make_sampler
    from mindaudio.data.text import CharTokenizer
    from mindaudio.decoding.hypothesis import log_softmax
    from mindaudio.models.build import build_model
    from mindaudio.checkpoint import load_model_weights

    tokenizer = CharTokenizer.from_config(config)
    split = load_split(manifest, tokenizer, config.SpectConfig,
                       bucket_boundaries=config.TrainingConfig.bucket_boundaries)
    model = build_model(config)
    load_model_weights(model, checkpoint)
    model.set_train(False)
    batches = make_sampler(split, config.EvalConfig.batch_size, train=False).batches(0)
    dataset = build_dataset(split, config.SpectConfig, batches, tokenizer.blank_id,
                            config.TrainingConfig.num_workers)
    log_probs: Dict[int, np.ndarray] = {}
    for batch in tqdm(dataset.create_dict_iterator(num_epochs=1, output_numpy=True), total=len(batches),
                      desc="acoustic model", unit="batch", disable=not progress):
        logits, lengths = model(ms.Tensor(batch["features"]), ms.Tensor(batch["feature_lengths"]))
        logits, lengths = logits.asnumpy(), lengths.asnumpy()
        for b, index in enumerate(batch["indices"].tolist()):
            log_probs[index] = log_softmax(logits[: int(lengths[b]), b])
    order = range(len(split.utterances))
    references = [tokenizer.decode(split.labels[i]) for i in order]
    return [log_probs[i] for i in order], references, [split.utterances[i].id for i in order]


def cache_key(config, checkpoint: str, manifest: str) -> str:
    stat = os.stat(checkpoint)
    text = json.dumps([os.path.abspath(manifest), os.path.getmtime(manifest), os.path.abspath(checkpoint),
                       stat.st_size, stat.st_mtime, config.ModelConfig.hidden_size,
                       config.ModelConfig.hidden_layers, config.ModelConfig.masked, config.labels,
                       repr(config.SpectConfig)])
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_collect(config, checkpoint: str, manifest: str, cache: str, progress: bool = True):
    key = cache_key(config, checkpoint, manifest)
    if os.path.isfile(cache):
        with np.load(cache, allow_pickle=False) as data:
            if str(data["key"]) == key:
                count = int(data["count"])
                print(f"log-probabilities from cache {cache}")
                return ([data[f"u{i}"] for i in range(count)], list(data["references"]), list(data["ids"]))
    log_probs, references, ids = collect_log_probs(config, checkpoint, manifest, progress)
    arrays = {f"u{i}": value for i, value in enumerate(log_probs)}
    tmp = cache + ".tmp.npz"
    np.savez(tmp, key=np.array(key), count=np.array(len(log_probs)), references=np.array(references),
             ids=np.array(ids), **arrays)
    os.replace(tmp, cache)
    return log_probs, references, ids


def grid_search(decoder, log_probs: Sequence[np.ndarray], references: Sequence[str],
                alphas: Sequence[float], betas: Sequence[float], progress: bool = True) -> List[dict]:
    """WER/CER (percent) of `decoder` (a BeamSearchDecoder with an LM) at every (alpha, beta)."""
    from tqdm import tqdm

    from mindaudio.metrics import char_error_rate, word_error_rate

    rows = []
    points = [(a, b) for a in alphas for b in betas]
    for alpha, beta in tqdm(points, desc="alpha/beta grid", unit="point", disable=not progress):
        decoder.set_lm_weights(alpha, beta)
        start = time.perf_counter()
        hypotheses = [decoder.decode(lp).text for lp in log_probs]
        rows.append({"alpha": alpha, "beta": beta, "wer": word_error_rate(references, hypotheses),
                     "cer": char_error_rate(references, hypotheses),
                     "seconds": round(time.perf_counter() - start, 2)})
    return rows


def best_row(rows: Sequence[dict]) -> dict:
    """Lowest WER, then lowest CER, then the smallest weights (the least LM influence)."""
    return min(rows, key=lambda r: (round(r["wer"], 6), round(r["cer"], 6), r["alpha"], r["beta"]))


def own_arguments(parser) -> None:
    parser.add_argument("--lm", default=None, help="ARPA or KenLM binary (default: EvalConfig.lm_path)")
    parser.add_argument("--manifest", default=None, help="validation manifest (default: TrainingConfig.val_manifest)")
    parser.add_argument("--checkpoint", default=None,
                        help="model weights (default: Pretrained_model, else the best checkpoint in ckpt_path)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.8, 1.2])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    parser.add_argument("--beam_width", type=int, default=None, help="default: EvalConfig.beam_width")
    parser.add_argument("--output", default="lm_tuning.json")
    parser.add_argument("--cache", default=None, help="log-probability cache (default: OUTPUT with .npz)")


def config_keys_of_flags(args) -> dict:
    """The EvalConfig keys this script's flags set: it always tunes the beam decoder."""
    keys = {"EvalConfig.decoder_type": "beam"}
    if args.lm:
        keys["EvalConfig.lm_path"] = args.lm
    if args.beam_width is not None:
        keys["EvalConfig.beam_width"] = args.beam_width
    if args.manifest:
        keys["TrainingConfig.val_manifest"] = args.manifest
    if args.checkpoint:
        keys["Pretrained_model"] = args.checkpoint
    return keys


def main(argv=None) -> int:
    config, args = parse_command_line(argv, DESCRIPTION, own_arguments, single_process=True,
                                      derived_overrides=config_keys_of_flags)
    if not config.EvalConfig.lm_path:
        raise ConfigError(f"{config.source}: EvalConfig.lm_path: no language model to tune; give --lm")
    manifest = config.TrainingConfig.val_manifest
    if not manifest:
        raise ConfigError(f"{config.source}: TrainingConfig.val_manifest: no validation manifest (give --manifest)")
    check_files(config, ["TrainingConfig.val_manifest", "Pretrained_model", "EvalConfig.lm_path",
                         "EvalConfig.lm_unigrams"])
    from mindaudio.decoding.beam import BeamSearchDecoder
    from mindaudio.decoding.greedy import GreedyDecoder
    from mindaudio.evaluation import checkpoint_to_evaluate
    from mindaudio.metrics import char_error_rate, word_error_rate
    from mindaudio.runtime.device import setup_runtime

    checkpoint = checkpoint_to_evaluate(config)
    output = args.output if args.output.endswith(".json") else args.output + ".json"
    check_writable_dir(os.path.dirname(os.path.abspath(output)), "--output")
    setup_runtime(config.runtime, config.TrainingConfig.seed)
    decoder = BeamSearchDecoder.from_config(config, len(config.labels) - 1)
    cache = args.cache or output[: -len(".json")] + ".npz"
    log_probs, references, _ = load_or_collect(config, checkpoint, manifest, cache)
    greedy = GreedyDecoder(config.labels, len(config.labels) - 1)
    greedy_hyps = [greedy.decode(lp).text for lp in log_probs]
    baseline = {"wer": word_error_rate(references, greedy_hyps), "cer": char_error_rate(references, greedy_hyps)}
    no_lm = BeamSearchDecoder(config.labels, len(config.labels) - 1, beam_width=decoder.beam_width)
    beam_hyps = [no_lm.decode(lp).text for lp in log_probs]
    beam_only = {"wer": word_error_rate(references, beam_hyps), "cer": char_error_rate(references, beam_hyps)}
    rows = grid_search(decoder, log_probs, references, args.alphas, args.betas)
    best = best_row(rows)
    print(f"{len(references)} utterances of {manifest}, beam width {decoder.beam_width}, LM {decoder.lm_path}")
    print(f"greedy: WER {baseline['wer']:.2f}%  CER {baseline['cer']:.2f}%")
    print(f"beam without LM: WER {beam_only['wer']:.2f}%  CER {beam_only['cer']:.2f}%")
    print(f"{'alpha':>6} {'beta':>6} {'WER %':>7} {'CER %':>7}")
    for row in rows:
        mark = "  <- best" if row is best else ""
        print(f"{row['alpha']:6.2f} {row['beta']:6.2f} {row['wer']:7.2f} {row['cer']:7.2f}{mark}")
    print(f"use: --EvalConfig.decoder_type beam --EvalConfig.lm_path {decoder.lm_path} "
          f"--EvalConfig.alpha {best['alpha']:g} --EvalConfig.beta {best['beta']:g}")
    result = {"manifest": manifest, "checkpoint": checkpoint, "lm_path": decoder.lm_path,
              "beam_width": decoder.beam_width, "utterances": len(references), "greedy": baseline,
              "beam_without_lm": beam_only,
              "grid": rows, "best": best}
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    os.replace(tmp, output)
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
