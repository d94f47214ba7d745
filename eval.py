"""Evaluate DeepSpeech2: python eval.py -c deepspeech2.yaml [--Section.key value ...] [--quiet]

Scores EvalConfig.test_manifest with Pretrained_model (or the best checkpoint in
CheckpointConfig.ckpt_path), prints the original's per-utterance lines and its
"Test Summary" line, and writes a JSON report to EvalConfig.save_output + '.json'.
"""
from mindaudio.cli import parse_command_line, run_cli

DESCRIPTION = "Evaluate DeepSpeech2: greedy or beam decoding, corpus WER and CER."


def own_arguments(parser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="leave out the per-utterance Ref/Hyp/WER lines (the summary is still printed)")


def main(argv=None) -> int:
    config, args = parse_command_line(argv, DESCRIPTION, own_arguments)
    from mindaudio.evaluation import run_evaluation
    # run_evaluation checks the report location before any work and prints every line itself.
    run_evaluation(config, print_utterances=not args.quiet)
    return 0


if __name__ == "__main__":
    run_cli(main)
