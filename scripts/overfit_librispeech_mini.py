"""Overfit a small DeepSpeech2 on the 14 real LibriSpeech utterances bundled in data/librispeech_mini.

A sanity check of the whole training path (features, masking, CTC, optimizer, checkpoints,
greedy decoding): a model that can learn must drive the greedy CER on its own training set
under 10%. Trains in rounds of --epochs_per_round epochs (each round resumes from the last
checkpoint) and evaluates after each round, until the CER target or --max_epochs is reached.

    python scripts/overfit_librispeech_mini.py [--work_dir runs/overfit] [--target_cer 10]
"""
import json
import sys
import time
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mindaudio.cli import ArgumentParser, run_cli  # noqa: E402  (first: sets MindSpore's log level before it loads)
from mindaudio.config import config_from_dict  # noqa: E402
from mindaudio.data.librispeech import extracted_utterances, parse_bool  # noqa: E402
from mindaudio.data.manifest import write_manifest_with_transcripts  # noqa: E402
from mindaudio.evaluation import run_evaluation  # noqa: E402
from mindaudio.training.trainer import Trainer  # noqa: E402


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--librispeech", default=str(REPO / "data" / "librispeech_mini" / "LibriSpeech"),
                        help="an extracted LibriSpeech/ tree")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "overfit"))
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--hidden_layers", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--epochs_per_round", type=int, default=25)
    parser.add_argument("--max_epochs", type=int, default=400)
    parser.add_argument("--target_cer", type=float, default=10.0)
    parser.add_argument("--drop_apostrophes", type=parse_bool, default=True,
                        help="train as the original did, without apostrophes in the targets (default: True)")
    args = parser.parse_args()

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    utterances = extracted_utterances(Path(args.librispeech))
    manifest = write_manifest_with_transcripts(work, utterances)
    # TrainingConfig.epochs is raised round by round below; each round resumes from the last checkpoint.
    data = {
        "TrainingConfig": {"epochs": args.epochs_per_round, "batch_size": 4, "train_manifest": str(manifest),
                           "val_manifest": "", "seed": 3, "num_workers": 2, "bucket_boundaries": [4.0, 8.0, 12.0],
                           "max_duration": 17.0, "log_interval": 5},
        "ModelConfig": {"hidden_size": args.hidden_size, "hidden_layers": args.hidden_layers},
        "OptimConfig": {"learning_rate": args.learning_rate, "learning_anneal": 1.0},
        "CheckpointConfig": {"ckpt_path": str(work / "ckpt"), "save_checkpoint_steps": 0, "keep_checkpoint_max": 2},
        "EvalConfig": {"batch_size": 14, "test_manifest": str(manifest), "save_output": str(work / "overfit_report")},
        "drop_apostrophes": args.drop_apostrophes,
    }
    start = time.perf_counter()
    history = []
    epochs = 0
    while epochs < args.max_epochs:
        epochs += args.epochs_per_round
        data["TrainingConfig"]["epochs"] = epochs
        config = config_from_dict(data, source="overfit")
        state = Trainer(config).run().state
        result, _ = run_evaluation(config, progress=False, print_utterances=False)
        minutes = (time.perf_counter() - start) / 60
        history.append({"epochs": epochs, "steps": state.global_step, "minutes": round(minutes, 2),
                        "cer": round(result.cer, 2), "wer": round(result.wer, 2)})
        print(json.dumps(history[-1]), flush=True)
        if result.cer < args.target_cer:
            break
    # The same model's hypotheses scored against references with and without apostrophes: what the
    # original's text handling (drop_apostrophes) changes in the reported rates.
    for drop in (True, False):
        config.drop_apostrophes = drop
        config.EvalConfig.save_output = str(work / f"overfit_report_drop_apostrophes_{drop}")
        result, _ = run_evaluation(config, progress=False, print_utterances=False)
        history.append({"references_without_apostrophes": drop, "cer": round(result.cer, 3),
                        "wer": round(result.wer, 3)})
        print(json.dumps(history[-1]), flush=True)
    (work / "overfit_summary.json").write_text(json.dumps(history, indent=1))
    best = [row for row in history if "epochs" in row][-1]
    print(f"overfit: {best['steps']} steps, {best['epochs']} epochs, {best['minutes']} min, "
          f"CER {best['cer']}% WER {best['wer']}% on the 14 training utterances")
    return 0 if best["cer"] < args.target_cer else 1


if __name__ == "__main__":
    run_cli(main)
