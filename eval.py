"""Evaluate DeepSpeech2: python eval.py -c deepspeech2.yaml [--Section.key value ...]

Scores EvalConfig.test_manifest with Pretrained_model (or the best checkpoint in
CheckpointConfig.ckpt_path) and writes a JSON report to EvalConfig.save_output + '.json'.
"""
import os

from mindaudio.cli import check_writable_dir, parse_command_line, run_cli

DESCRIPTION = "Evaluate DeepSpeech2: greedy or beam decoding, corpus WER and CER."


def main(argv=None) -> int:
    config, _ = parse_command_line(argv, DESCRIPTION)
    # Checked first: an unwritable report location must not throw away a finished evaluation.
    check_writable_dir(os.path.dirname(os.path.abspath(config.EvalConfig.save_output)),
                       "EvalConfig.save_output", config)
    from mindaudio.evaluation import run_evaluation
    result, report = run_evaluation(config)
    print(f"{result.num_utterances} utterances ({result.audio_seconds / 3600:.2f} h): "
          f"WER {result.wer:.2f}%  CER {result.cer:.2f}%")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    run_cli(main)
