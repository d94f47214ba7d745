"""Transcribe audio files: python transcribe.py -c CONFIG --checkpoint CKPT FILE... [--json]

Any format soundfile reads (WAV, FLAC, OGG, ...), any sample rate, mono or stereo. Prints one line
per file, `FILE<TAB>TRANSCRIPT`, or with --json one JSON object per line with the transcript, the
duration and each word's start and end in seconds. A file that cannot be read is reported on
stderr (and as {"path", "error"} with --json) and the others are still transcribed; the exit
status is then 1. Decoding follows EvalConfig (decoder_type, beam_width, lm_path, alpha, beta,
hotwords), which --EvalConfig.key VALUE overrides like any other key.
"""
import json
import sys
from typing import List, Optional, Sequence, Tuple

import mindaudio  # noqa: F401  (must precede mindspore: sets ONEDNN_MAX_CPU_ISA)
from mindaudio.config import ConfigError, build_arg_parser, config_command_line, parse_command_line
from mindaudio.checkpoint import CheckpointError

DESCRIPTION = "Transcribe audio files with DeepSpeech2 (greedy or beam search with an n-gram LM)."


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Separate `--Section.key VALUE` (or `--Section.key=VALUE`) overrides from the other arguments,
    so that override values are never taken for file names."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and "." in token.split("=", 1)[0]:
            overrides.append(token)
            if "=" not in token and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            rest.append(token)
        i += 1
    return overrides, rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    parser = build_arg_parser(DESCRIPTION)
    parser.add_argument("--checkpoint", default=None,
                        help="model weights (default: Pretrained_model from the config)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file, with word timings")
    parser.add_argument("--chunk_seconds", type=float, default=20.0,
                        help="longer recordings are cut into chunks of this length (default: %(default)s)")
    parser.add_argument("--context_seconds", type=float, default=2.0,
                        help="audio each chunk also sees on either side (default: %(default)s)")
    parser.add_argument("files", nargs="+", help="audio files")
    args = parser.parse_args(rest)
    try:
        config = parse_command_line(config_command_line(args, overrides), DESCRIPTION)
        checkpoint = args.checkpoint or config.Pretrained_model
        if not checkpoint:
            raise ConfigError(f"{config.source}: no model weights: give --checkpoint or set Pretrained_model")
        from mindaudio.inference import build_transcriber, transcribe_files
        from mindaudio.runtime.device import setup_runtime

        setup_runtime(config.runtime, config.TrainingConfig.seed)
        transcriber = build_transcriber(config, checkpoint, args.chunk_seconds, args.context_seconds)
    except (ConfigError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failures = 0
    for result in transcribe_files(transcriber, args.files):
        if hasattr(result, "error"):
            failures += 1
            print(f"error: {result.error}", file=sys.stderr)
            if args.json:
                print(json.dumps(result.as_dict()), flush=True)
        elif args.json:
            print(json.dumps(result.as_dict()), flush=True)
        else:
            print(f"{result.path}\t{result.text}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
