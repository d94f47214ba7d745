"""Evaluate DeepSpeech2: python eval.py -c deepspeech2.yaml [--Section.key value ...]

Scores EvalConfig.test_manifest with Pretrained_model (or the best checkpoint in
CheckpointConfig.ckpt_path) and writes a JSON report to EvalConfig.save_output + '.json'.
"""
import sys

import mindaudio  # noqa: F401  (must precede mindspore: sets ONEDNN_MAX_CPU_ISA)
from mindaudio.config import ConfigError, parse_command_line


def main(argv=None) -> int:
    try:
        config = parse_command_line(argv, "Evaluate DeepSpeech2: greedy decoding, corpus WER and CER.")
        from mindaudio.evaluation import run_evaluation
        result, report = run_evaluation(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result.num_utterances} utterances ({result.audio_seconds / 3600:.2f} h): "
          f"WER {result.wer:.2f}%  CER {result.cer:.2f}%")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
