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
from typing import Optional, Sequence

from mindaudio.cli import (CommandLineError, add_checkpoint_argument, checkpoint_override, parse_command_line,
                           require_model_weights, run_cli)

DESCRIPTION = "Transcribe audio files with DeepSpeech2 (greedy or beam search with an n-gram LM)."


def own_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per file, with word timings")
    parser.add_argument("--chunk_seconds", type=float, default=20.0,
                        help="longer recordings are cut into chunks of this length (default: %(default)s)")
    parser.add_argument("--context_seconds", type=float, default=2.0,
                        help="audio each chunk also sees on either side (default: %(default)s)")
    parser.add_argument("--progress", action="store_true",
                        help="a progress bar per long file on stderr even when it is not a terminal")
    parser.add_argument("files", nargs="+", help="audio files")


def main(argv: Optional[Sequence[str]] = None) -> int:
    config, args = parse_command_line(argv, DESCRIPTION, own_arguments, single_process=True,
                                      derived_overrides=checkpoint_override)
    require_model_weights(config, "EvalConfig.lm_path", "EvalConfig.lm_unigrams")
    from mindaudio.inference import ChunkGeometry, Failure, build_transcriber, transcribe_files
    from mindaudio.runtime.device import setup_runtime

    try:  # checked before the model is built
        ChunkGeometry.from_seconds(config.SpectConfig, args.chunk_seconds, args.context_seconds)
    except ValueError as err:
        raise CommandLineError(f"--{err}") from None

    # stdout carries only transcripts (one line or JSON object per file): the device line goes to stderr.
    setup_runtime(config.runtime, config.TrainingConfig.seed, log=lambda line: print(line, file=sys.stderr))
    transcriber = build_transcriber(config, config.Pretrained_model, args.chunk_seconds, args.context_seconds,
                                    progress=True if args.progress else None)
    failures = 0
    for result in transcribe_files(transcriber, args.files):
        if isinstance(result, Failure):
            failures += 1
            print(f"error: {result.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(result.as_dict()), flush=True)
        elif not isinstance(result, Failure):
            print(f"{result.path}\t{result.text}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main)
