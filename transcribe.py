"""Transcribe audio files: python transcribe.py -c CONFIG --checkpoint CKPT FILE... [--json]

Any format soundfile reads (WAV, FLAC, OGG, ...), any sample rate, mono or stereo. Prints one line
per file, `FILE<TAB>TRANSCRIPT`, or with --json one JSON object per line with the transcript, the
duration and each word's start and end in seconds. A file that cannot be read is reported on
stderr (and as {"path", "error"} with --json) and the others are still transcribed; the exit
status is then 1. Decoding follows EvalConfig (decoder_type, beam_width, lm_path, alpha, beta,
hotwords), which --EvalConfig.key VALUE overrides like any other key.

--stream (a unidirectional model with fixed feature statistics, e.g. configs/digits_streaming.yaml)
feeds each file to the streaming recogniser in chunks of --stream_chunk_ms, as fast as possible or,
with --realtime, at the pace of the audio, and prints the partial transcript whenever it changes:
`FILE<TAB>partial<TAB>SECONDS<TAB>TEXT` (SECONDS: audio fed so far), then `FILE<TAB>final<TAB>SECONDS<TAB>TEXT`.
With --json, one object per line: {"path", "type": "partial"|"final", "transcript", "audio_seconds",
"wall_seconds"} (wall_seconds: when it was available, from the file's start).
"""
import json
import sys
import time
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
    parser.add_argument("--stream", action="store_true",
                        help="streaming recognition: print partial transcripts as the audio is fed "
                             "(needs ModelConfig.bidirectional False and SpectConfig.normalisation fixed)")
    parser.add_argument("--realtime", action="store_true",
                        help="with --stream: feed the audio at its real pace instead of as fast as possible")
    parser.add_argument("--stream_chunk_ms", type=float, default=160.0,
                        help="with --stream: milliseconds of audio per chunk fed (default: %(default)s)")
    parser.add_argument("files", nargs="+", help="audio files")


def main(argv: Optional[Sequence[str]] = None) -> int:
    config, args = parse_command_line(argv, DESCRIPTION, own_arguments, single_process=True,
                                      derived_overrides=checkpoint_override)
    if args.stream:  # a model that cannot stream is named before its files are looked for
        from mindaudio.streaming import check_streamable_config
        check_streamable_config(config)
    require_model_weights(config, "EvalConfig.lm_path", "EvalConfig.lm_unigrams")
    from mindaudio.inference import ChunkGeometry, Failure, build_transcriber, transcribe_files
    from mindaudio.runtime.device import setup_runtime

    try:  # checked before the model is built
        ChunkGeometry.from_seconds(config.SpectConfig, args.chunk_seconds, args.context_seconds)
    except ValueError as err:
        raise CommandLineError(f"--{err}") from None
    if args.realtime and not args.stream:
        raise CommandLineError("--realtime needs --stream")
    if args.stream:
        return stream_files(config, args, setup_runtime)

    # stdout carries only transcripts (one line or JSON object per file): the device line goes to stderr.
    runtime = setup_runtime(config.runtime, config.TrainingConfig.seed, log=lambda line: print(line, file=sys.stderr))
    transcriber = build_transcriber(config, config.Pretrained_model, args.chunk_seconds, args.context_seconds,
                                    progress=True if args.progress else None,
                                    compile_cache_dir=runtime.compile_cache_dir,
                                    log=lambda line: print(line, file=sys.stderr))
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


def stream_files(config, args, setup_runtime) -> int:
    """--stream: each file through the streaming recogniser; 1 if a file failed, else 0."""
    from mindaudio.data.audio import AudioError
    from mindaudio.inference import stream_mono
    from mindaudio.streaming import StreamingError, build_streaming_recogniser, check_streamable_config

    check_streamable_config(config)  # before the model is built
    rate = config.SpectConfig.sample_rate
    chunk = int(round(args.stream_chunk_ms / 1000 * rate))
    if chunk < 1:
        raise CommandLineError(f"--stream_chunk_ms must give at least one sample at {rate} Hz, "
                               f"got {args.stream_chunk_ms}")
    setup_runtime(config.runtime, config.TrainingConfig.seed, log=lambda line: print(line, file=sys.stderr))
    recogniser = build_streaming_recogniser(config, config.Pretrained_model)
    failures = 0
    for path in args.files:
        recogniser.reset()
        start = time.perf_counter()
        fed = 0

        def emit(kind: str, text: str) -> None:
            seconds = fed / rate
            if args.json:
                print(json.dumps({"path": path, "type": kind, "transcript": text,
                                  "audio_seconds": round(seconds, 3),
                                  "wall_seconds": round(time.perf_counter() - start, 3)}), flush=True)
            else:
                print(f"{path}\t{kind}\t{seconds:.2f}\t{text}", flush=True)

        try:
            shown = ""
            for block in stream_mono(path, rate, block_samples=max(chunk, 1024)):
                for begin in range(0, block.size, chunk):
                    piece = block[begin:begin + chunk]
                    if args.realtime:  # a chunk is available once its last sample has been spoken
                        time.sleep(max(0.0, start + (fed + piece.size) / rate - time.perf_counter()))
                    fed += piece.size
                    partial = recogniser.feed(piece)
                    if partial != shown:
                        shown = partial
                        emit("partial", partial)
            emit("final", recogniser.finish())
        except (AudioError, StreamingError) as err:
            failures += 1
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            print(f"error: {message}", file=sys.stderr)
            if args.json:
                print(json.dumps({"path": path, "error": message}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main)
